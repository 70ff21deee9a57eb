// Ingest: dropped or picked files → tiles with a label and a group (from subfolders or a
// manifest.csv), and the files skipped with a reason. Only extensions the model crate's decoder
// reads count as images (the list comes from the wasm module with the model).

const UNLABELLED_DIRS = new Set(["unlabelled", "unlabeled", "unknown", "unlabelled_tiles"]);

function extOf(name) { const i = name.lastIndexOf("."); return i < 0 ? "" : name.slice(i + 1).toLowerCase(); }

export function parseCsv(text) {
  const rows = [];
  let row = [], field = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { field += '"'; i++; } else if (c === '"') quoted = false; else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(field); field = ""; }
    else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field); field = ""; if (row.some((v) => v !== "")) rows.push(row); row = [];
    } else field += c;
  }
  row.push(field); if (row.some((v) => v !== "")) rows.push(row);
  return rows;
}

/** Append every file under the FileSystemEntry `entry` to `out` as `{ file, path }`. */
export async function walkEntry(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((res, rej) => entry.file(res, rej));
    out.push({ file, path: prefix + entry.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await new Promise((res, rej) => reader.readEntries(res, rej));
      if (!batch.length) break;
      for (const child of batch) await walkEntry(child, `${prefix}${entry.name}/`, out);
    }
  }
}

/**
 * Tiles from `entries` ([{ file, path }], paths relative to the dropped or picked root, with the
 * root's own name first for folders). `extensions`: the image extensions the decoder reads.
 * Returns `{ items: [{ name, file, label, group }], skipped: [{ name, reason }] }`.
 */
export async function readTiles(entries, extensions) {
  const isImage = new Set(extensions);
  entries.sort((a, b) => a.path.localeCompare(b.path));
  // Strip a common root folder.
  const first = entries[0]?.path.split("/") ?? [];
  const rootName = first.length > 1 && entries.every((e) => e.path.startsWith(first[0] + "/")) ? first[0] : null;
  const rel = (p) => (rootName ? p.slice(rootName.length + 1) : p);
  const manifestEntry = entries.find((e) => rel(e.path) === "manifest.csv");
  let manifest = null;
  if (manifestEntry) {
    const rows = parseCsv(await manifestEntry.file.text());
    const head = rows[0].map((h) => h.trim().toLowerCase());
    const pi = head.indexOf("path"), li = head.indexOf("label"), gi = head.indexOf("group");
    if (pi >= 0 && li >= 0) {
      manifest = new Map(rows.slice(1).map((r) => [r[pi], { label: r[li] || null, group: gi >= 0 ? r[gi] || "" : "" }]));
    }
  }
  const known = extensions.map((x) => `.${x}`).join(", ");
  const items = [], skipped = [];
  for (const e of entries) {
    const r = rel(e.path);
    const parts = r.split("/");
    const base = parts[parts.length - 1];
    if (base.startsWith(".") || r === "manifest.csv") continue;
    if (manifest && !manifest.has(r)) {
      // As natively: a folder with a manifest is the files it lists (mtpath tile's slides/
      // overviews and records sit beside its tiles).
      skipped.push({ name: r, reason: "not listed in the folder's manifest.csv" });
      continue;
    }
    if (!isImage.has(extOf(base))) {
      skipped.push({ name: r, reason: `not an image the explorer reads (.${extOf(base) || "no extension"}; it reads ${known})` });
      continue;
    }
    let label = null, group = "";
    if (manifest) ({ label, group } = manifest.get(r));
    else if (parts.length >= 2 && !UNLABELLED_DIRS.has(parts[0].toLowerCase())) {
      label = parts[0]; group = parts.length >= 3 ? parts.slice(0, -1).join("/") : "";
    }
    items.push({ name: r, file: e.file, label, group });
  }
  return { items, skipped };
}
