// mtpath feature explorer: the page's logic. Heavy work runs in workers (extract-worker.js,
// analysis-worker.js) over the same wasm build of mtpath's model crate; nothing leaves the page.

const $ = (id) => document.getElementById(id);
const IMAGE_EXT = new Set(["jpg", "jpeg", "png", "tif", "tiff", "bmp", "gif", "webp"]);
const UNLABELLED_DIRS = new Set(["unlabelled", "unlabeled", "unknown", "unlabelled_tiles"]);
const THUMB = 96;
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#ad494a", "#637939", "#843c39", "#5254a3", "#6b6ecf"];
const UNLABELLED_COLOUR = "#9a9a9a";

const state = {
  modelBytes: null, modelName: "", modelSha256: "", card: null,
  items: [],          // { name, path, label, group, thumb: ImageBitmap, thumbSize: [w, h] }
  features: null,     // Float32Array n × d, rows in items order
  dim: 0,
  skipped: [],        // { name, reason }
  xy: null,           // Float32Array n × 2
  projection: "", mapReady: false,
  selection: new Set(),
  probe: null,        // { classes, cv, scores, pred, json, kind }
  extraction: null,   // running extraction
  stats: null,
};
window.mtpathApp = state; // for tests and the curious: the page's state, read-only by convention

// Milestones as body attributes (data-stage: the latest step; data-map, data-probe,
// data-neighbours: what is on the page), for people reading the DOM and for tests.
function setStage(stage) {
  document.body.dataset.stage = stage;
  if (stage === "map-drawn") document.body.dataset.map = state.projection;
  if (stage === "probe-done") document.body.dataset.probe = "done";
  if (stage === "neighbours-shown") document.body.dataset.neighbours = "shown";
  if (stage === "extracting") { delete document.body.dataset.map; delete document.body.dataset.probe; delete document.body.dataset.neighbours; }
}
function status(el, text, error = false) { $(el).textContent = text; $(el).classList.toggle("error", error); }

// ---------- analysis worker (request/response by id) ----------
const analysis = new Worker(new URL("./analysis-worker.js", import.meta.url), { type: "module" });
let nextId = 1;
const pending = new Map();
analysis.onmessage = (e) => {
  const msg = e.data;
  const p = pending.get(msg.id);
  if (!p) return;
  if (msg.partial) { p.onPartial?.(msg); return; }
  pending.delete(msg.id);
  if (msg.error) p.reject(new Error(msg.error)); else p.resolve(msg);
};
function ask(type, body = {}, onPartial = null, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onPartial });
    analysis.postMessage({ id, type, ...body }, transfer);
  });
}

// ---------- model ----------
async function sha256Hex(bytes) {
  if (!crypto.subtle) return "";
  const h = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(h), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function loadModel(bytes, name) {
  status("model-status", `Loading ${name} (${(bytes.byteLength / 1e6).toFixed(1)} MB)…`);
  try {
    const w = new Worker(new URL("./extract-worker.js", import.meta.url), { type: "module" });
    const card = await new Promise((resolve, reject) => {
      w.onmessage = (e) => e.data.type === "model-ready" ? resolve(e.data.card) : reject(new Error(e.data.error));
      w.onerror = (e) => reject(new Error(e.message || "worker failed to start"));
      w.postMessage({ type: "model", bytes: bytes.slice(0) });
    });
    w.terminate();
    state.modelBytes = bytes; state.modelName = name; state.card = card;
    state.modelSha256 = await sha256Hex(bytes);
    const ex = card.export;
    const tasks = ex && ex.tasks && ex.tasks.length ? `; pre-trained on ${ex.tasks.map((t) => t.name || t).join(", ")}` : "";
    status("model-status", `Loaded ${name}: ${card.architecture}, ${card.feature_dim}-d features, ` +
      `resize ${card.resize} → crop ${card.input_size}${card.folded ? ", BatchNorm folded" : ""}${tasks}.`);
    setStage("model-loaded");
    if (state.items.length) status("input-status", "Model changed: drop the tiles again to embed them with it.");
  } catch (err) {
    status("model-status", `Could not load ${name}: ${err.message}. Use a .safetensors file from mtpath export, an mtpath checkpoint or a torchvision state dict.`, true);
  }
}

$("model-file").onchange = async (e) => {
  const f = e.target.files[0];
  if (f) await loadModel(new Uint8Array(await f.arrayBuffer()), f.name);
};
const modelPanel = $("model-panel");
modelPanel.addEventListener("dragover", (e) => { e.preventDefault(); modelPanel.classList.add("over"); });
modelPanel.addEventListener("dragleave", () => modelPanel.classList.remove("over"));
modelPanel.addEventListener("drop", async (e) => {
  e.preventDefault(); e.stopPropagation(); modelPanel.classList.remove("over");
  const f = e.dataTransfer.files[0];
  if (f) await loadModel(new Uint8Array(await f.arrayBuffer()), f.name);
});

async function offerServerModels() {
  try {
    const r = await fetch("models/index.json", { cache: "no-store" });
    if (!r.ok) return;
    const { models } = await r.json();
    if (!models || !models.length) return;
    const sel = $("model-server");
    for (const m of models) {
      const o = document.createElement("option");
      o.value = m.url; o.textContent = `${m.name} (${(m.bytes / 1e6).toFixed(1)} MB)`;
      sel.appendChild(o);
    }
    sel.hidden = false;
    sel.onchange = () => sel.value && fetchModel(sel.value);
    const auto = new URLSearchParams(location.search).get("model") ?? models[0].url;
    sel.value = auto;
    await fetchModel(auto);
  } catch { /* no server models: fine */ }
}
async function fetchModel(url) {
  status("model-status", `Downloading ${url} from this site…`);
  const r = await fetch(url);
  if (!r.ok) { status("model-status", `${url}: HTTP ${r.status}`, true); return; }
  await loadModel(new Uint8Array(await r.arrayBuffer()), url.split("/").pop());
}

// ---------- input: folders, files, drops ----------
function extOf(name) { const i = name.lastIndexOf("."); return i < 0 ? "" : name.slice(i + 1).toLowerCase(); }

function parseCsv(text) {
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

// entries: [{ file, path }] where path is relative to the dropped/picked root (with the root's
// own name first for folders).
async function ingest(entries) {
  if (!state.modelBytes) { status("input-status", "Load a model first (step 1).", true); return; }
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
  const items = [], skipped = [];
  for (const e of entries) {
    const r = rel(e.path);
    const parts = r.split("/");
    const base = parts[parts.length - 1];
    if (base.startsWith(".") || r === "manifest.csv") continue;
    if (!IMAGE_EXT.has(extOf(base))) { skipped.push({ name: r, reason: `not an image (.${extOf(base) || "no extension"})` }); continue; }
    let label = null, group = "";
    if (manifest && manifest.has(r)) ({ label, group } = manifest.get(r));
    else if (parts.length >= 2 && !UNLABELLED_DIRS.has(parts[0].toLowerCase())) {
      label = parts[0]; group = parts.length >= 3 ? parts.slice(0, -1).join("/") : "";
    }
    items.push({ name: r, file: e.file, label, group });
  }
  await runExtraction(items, skipped);
}

async function walkEntry(entry, prefix, out) {
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

const dropZone = $("drop-zone");
dropZone.addEventListener("dragover", (e) => { e.preventDefault(); dropZone.classList.add("over"); });
dropZone.addEventListener("dragleave", () => dropZone.classList.remove("over"));
dropZone.addEventListener("drop", async (e) => {
  e.preventDefault(); dropZone.classList.remove("over");
  const out = [];
  const items = [...(e.dataTransfer.items || [])];
  const entries = items.map((it) => it.webkitGetAsEntry && it.webkitGetAsEntry()).filter(Boolean);
  if (entries.length) for (const en of entries) await walkEntry(en, "", out);
  else for (const f of e.dataTransfer.files) out.push({ file: f, path: f.name });
  await ingest(out);
});
// Inputs are cleared after reading so that picking the same folder again re-runs.
$("folder-input").onchange = (e) => {
  const files = [...e.target.files].map((f) => ({ file: f, path: f.webkitRelativePath || f.name }));
  e.target.value = "";
  ingest(files);
};
$("files-input").onchange = (e) => {
  const files = [...e.target.files].map((f) => ({ file: f, path: f.name }));
  e.target.value = "";
  ingest(files);
};

// ---------- extraction with a pool of workers ----------
async function runExtraction(items, skipped) {
  if (state.extraction) state.extraction.cancel();
  const nWorkers = Math.max(1, Math.min(8, Number($("workers").value) || 1));
  const d = state.card.feature_dim;
  const results = new Array(items.length);
  const t0 = performance.now();
  let done = 0, failed = 0, next = 0, cancelled = false;
  const workers = [];
  setStage("extracting");
  $("progress").hidden = false;
  state.mapReady = false; state.probe = null; state.selection.clear();
  const update = () => {
    const elapsed = (performance.now() - t0) / 1000;
    const rate = done / Math.max(elapsed, 1e-3);
    const eta = (items.length - done) / Math.max(rate, 1e-9);
    $("progress-bar").max = items.length; $("progress-bar").value = done;
    $("progress-text").textContent = `${done} / ${items.length} · ${rate.toFixed(1)} images/s · ETA ${done ? eta.toFixed(0) : "–"} s`;
  };
  update();
  const finished = new Promise((resolve) => {
    const ext = { cancel: () => { cancelled = true; workers.forEach((w) => w.terminate()); resolve(); } };
    state.extraction = ext;
    $("cancel").onclick = ext.cancel;
    let live = 0;
    const feed = (w) => {
      if (cancelled) return;
      if (next >= items.length) { w.terminate(); if (--live === 0) resolve(); return; }
      const id = next++;
      w.postMessage({ type: "extract", id, file: items[id].file, thumb: THUMB });
    };
    const count = Math.min(nWorkers, Math.max(items.length, 1));
    for (let i = 0; i < count; i++) {
      const w = new Worker(new URL("./extract-worker.js", import.meta.url), { type: "module" });
      workers.push(w); live++;
      w.onmessage = (e) => {
        const m = e.data;
        if (m.type === "model-ready") { feed(w); return; }
        if (m.type === "model-error") { cancelled = true; status("input-status", m.error, true); workers.forEach((x) => x.terminate()); resolve(); return; }
        if (m.type === "done") results[m.id] = m;
        else if (m.type === "failed") { results[m.id] = { error: m.error }; failed++; }
        done++; update(); feed(w);
      };
      w.postMessage({ type: "model", bytes: state.modelBytes.slice(0) });
    }
    if (!items.length) resolve();
  });
  await finished;
  state.extraction = null;
  $("progress").hidden = true;
  // Assemble in input order: embedded items first, failures listed with their reason.
  const kept = [];
  for (let i = 0; i < items.length; i++) {
    const r = results[i];
    if (!r) continue; // not reached (cancelled)
    if (r.error) { skipped.push({ name: items[i].name, reason: r.error }); continue; }
    kept.push({ ...items[i], r });
  }
  const features = new Float32Array(kept.length * d);
  const newItems = [];
  for (let i = 0; i < kept.length; i++) {
    const { r, file, ...meta } = kept[i];
    features.set(r.features, i * d);
    const img = new ImageData(new Uint8ClampedArray(r.thumb.buffer), r.width, r.height);
    const thumb = await createImageBitmap(img);
    newItems.push({ ...meta, file, thumb, thumbSize: [r.width, r.height], size: [r.sourceWidth, r.sourceHeight] });
  }
  const seconds = (performance.now() - t0) / 1000;
  state.items = newItems; state.features = features; state.dim = d; state.skipped = skipped;
  state.stats = { seconds, imagesPerSecond: kept.length / Math.max(seconds, 1e-9), workers: nWorkers, cancelled };
  showSkipped();
  const labels = new Set(newItems.map((it) => it.label).filter((l) => l !== null));
  const unl = newItems.filter((it) => it.label === null).length;
  status("input-status", `${cancelled ? "Cancelled: " : ""}${kept.length} tiles embedded in ${seconds.toFixed(1)} s ` +
    `(${state.stats.imagesPerSecond.toFixed(1)} images/s, ${nWorkers} worker${nWorkers > 1 ? "s" : ""}); ` +
    `${labels.size} labels, ${unl} unlabelled${skipped.length ? `, ${skipped.length} skipped` : ""}.`);
  setStage("extracted");
  ["export-features", "export-features-csv", "export-map"].forEach((b) => ($(b).disabled = !kept.length));
  $("run-probe").disabled = labels.size < 2;
  $("export-predictions").disabled = true; $("export-probe").disabled = true;
  $("probe-results").innerHTML = ""; $("predictions").innerHTML = ""; $("neighbours").innerHTML = "";
  if (kept.length >= 2) {
    await ask("data", { x: features.slice(0), n: kept.length, d });
    await project($("projection").value);
  } else {
    status("map-status", "At least two tiles are needed for a map.");
  }
}

function showSkipped() {
  const s = state.skipped;
  $("skipped").hidden = !s.length;
  $("skipped-summary").textContent = `${s.length} file${s.length === 1 ? "" : "s"} skipped`;
  const ul = $("skipped-list"); ul.innerHTML = "";
  for (const { name, reason } of s) {
    const li = document.createElement("li"); li.textContent = `${name}: ${reason}`; ul.appendChild(li);
  }
}

// ---------- projection ----------
async function project(kind) {
  const n = state.items.length;
  if (n < 2) return;
  if (kind === "pca") {
    await ask("cancel-tsne");
    const t0 = performance.now();
    const r = await ask("pca");
    setMap(r.xy, "pca");
    status("map-status", `PCA of ${n} tiles in ${(performance.now() - t0).toFixed(0)} ms; ` +
      `axes explain ${(100 * r.variance[0]).toFixed(1)}% and ${(100 * r.variance[1]).toFixed(1)}% of the variance.`);
  } else {
    const perplexity = Number($("perplexity").value) || 30;
    status("map-status", `t-SNE of ${n} tiles: computing affinities…`);
    try {
      const r = await ask("tsne", { perplexity, seed: 0 }, (p) => {
        setMap(p.xy, "tsne", false);
        status("map-status", `t-SNE: iteration ${p.iteration} / ${p.total} (${(p.ms / 1000).toFixed(1)} s)`);
      });
      setMap(r.xy, "tsne");
      status("map-status", `t-SNE done: ${n} tiles, perplexity ${perplexity}, ${r.total} iterations in ${(r.ms / 1000).toFixed(1)} s.`);
    } catch (err) { status("map-status", `t-SNE failed: ${err.message}`, true); }
  }
}
$("projection").onchange = (e) => project(e.target.value);
$("perplexity").onchange = () => $("projection").value === "tsne" && project("tsne");

// ---------- the map ----------
const canvas = $("map");
const ctx = canvas.getContext("2d");
const view = { scale: 1, tx: 0, ty: 0, bounds: null };
let drag = null, hoverIndex = -1, drawQueued = false, grid = null;

function setMap(xy, projection, final = true) {
  state.xy = xy; state.projection = projection;
  let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  for (let i = 0; i < xy.length; i += 2) {
    x0 = Math.min(x0, xy[i]); x1 = Math.max(x1, xy[i]); y0 = Math.min(y0, xy[i + 1]); y1 = Math.max(y1, xy[i + 1]);
  }
  view.bounds = { x0, x1, y0, y1 };
  if (final) { view.scale = 1; view.tx = 0; view.ty = 0; state.mapReady = true; }
  grid = null;
  requestDraw();
  if (final) setStage("map-drawn");
}
$("reset-view").onclick = () => { view.scale = 1; view.tx = 0; view.ty = 0; grid = null; requestDraw(); };

function toScreen(i) {
  const b = view.bounds, pad = 20;
  const w = canvas.width - 2 * pad, h = canvas.height - 2 * pad;
  // Each axis fills the canvas: a PCA map whose first axis dominates stays readable.
  const sx = w / Math.max(b.x1 - b.x0, 1e-12), sy = h / Math.max(b.y1 - b.y0, 1e-12);
  const cx = (state.xy[2 * i] - (b.x0 + b.x1) / 2) * sx, cy = (state.xy[2 * i + 1] - (b.y0 + b.y1) / 2) * sy;
  return [canvas.width / 2 + (cx * view.scale) + view.tx, canvas.height / 2 - (cy * view.scale) + view.ty];
}

function colourKeys() {
  const by = $("colour-by").value;
  return state.items.map((it, i) => {
    if (by === "prediction" && state.probe) return state.probe.classes[state.probe.pred[i]];
    if (by === "group") return it.group || null;
    return it.label;
  });
}

function requestDraw() { if (!drawQueued) { drawQueued = true; requestAnimationFrame(draw); } }
function draw() {
  drawQueued = false;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!state.xy) return;
  const keys = colourKeys();
  const names = [...new Set(keys.filter((k) => k !== null))].sort();
  const colour = new Map(names.map((k, i) => [k, PALETTE[i % PALETTE.length]]));
  // Batch points by colour: one fillStyle change per class keeps 10,000 points smooth.
  const byColour = new Map();
  const pos = new Float32Array(state.items.length * 2);
  for (let i = 0; i < state.items.length; i++) {
    const [x, y] = toScreen(i); pos[2 * i] = x; pos[2 * i + 1] = y;
    const c = keys[i] === null ? UNLABELLED_COLOUR : colour.get(keys[i]);
    if (!byColour.has(c)) byColour.set(c, []);
    byColour.get(c).push(i);
  }
  const r = state.items.length > 3000 ? 2 : 3;
  for (const [c, idx] of byColour) {
    ctx.fillStyle = c;
    for (const i of idx) ctx.fillRect(pos[2 * i] - r, pos[2 * i + 1] - r, 2 * r, 2 * r);
  }
  if (state.selection.size) {
    ctx.strokeStyle = "#000"; ctx.lineWidth = 1;
    for (const i of state.selection) ctx.strokeRect(pos[2 * i] - r - 1, pos[2 * i + 1] - r - 1, 2 * r + 2, 2 * r + 2);
  }
  if (hoverIndex >= 0) {
    ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
    ctx.beginPath(); ctx.arc(pos[2 * hoverIndex], pos[2 * hoverIndex + 1], r + 4, 0, 2 * Math.PI); ctx.stroke();
  }
  if (drag && drag.mode !== "pan" && drag.path.length > 1) {
    ctx.strokeStyle = "#7a2a8c"; ctx.lineWidth = 1; ctx.setLineDash([4, 3]);
    ctx.beginPath();
    if (drag.mode === "box") {
      const [a, b] = [drag.path[0], drag.path[drag.path.length - 1]];
      ctx.rect(a[0], a[1], b[0] - a[0], b[1] - a[1]);
    } else {
      drag.path.forEach(([x, y], k) => (k ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
    }
    ctx.stroke(); ctx.setLineDash([]);
  }
  state.screen = pos;
  $("legend").innerHTML = names.slice(0, 20).map((k) => `<div><span style="background:${colour.get(k)}"></span>${escapeHtml(k)}</div>`).join("") +
    (keys.some((k) => k === null) ? `<div><span style="background:${UNLABELLED_COLOUR}"></span>${$("colour-by").value === "group" ? "no group" : "unlabelled"}</div>` : "");
}
$("colour-by").onchange = requestDraw;

// Nearest point under the cursor via a coarse screen grid (rebuilt after the view changes).
function buildGrid() {
  const cell = 16, pos = state.screen;
  grid = { cell, map: new Map() };
  for (let i = 0; i < state.items.length; i++) {
    const key = `${Math.floor(pos[2 * i] / cell)},${Math.floor(pos[2 * i + 1] / cell)}`;
    if (!grid.map.has(key)) grid.map.set(key, []);
    grid.map.get(key).push(i);
  }
}
function pick(x, y) {
  if (!state.screen) return -1;
  if (!grid) buildGrid();
  const { cell, map } = grid;
  const gx = Math.floor(x / cell), gy = Math.floor(y / cell);
  let best = -1, bestD = 64;
  for (let dx = -1; dx <= 1; dx++) for (let dy = -1; dy <= 1; dy++) {
    for (const i of map.get(`${gx + dx},${gy + dy}`) || []) {
      const d = (state.screen[2 * i] - x) ** 2 + (state.screen[2 * i + 1] - y) ** 2;
      if (d < bestD) { bestD = d; best = i; }
    }
  }
  return best;
}
function canvasPoint(e) {
  const r = canvas.getBoundingClientRect();
  return [(e.clientX - r.left) * (canvas.width / r.width), (e.clientY - r.top) * (canvas.height / r.height)];
}

function showTooltip(i, e) {
  const tip = $("tooltip");
  if (i < 0) { tip.hidden = true; return; }
  const it = state.items[i];
  drawThumb(it, $("tooltip-thumb"));
  const pred = state.probe ? ` · predicted ${state.probe.classes[state.probe.pred[i]]}` : "";
  $("tooltip-text").textContent = `${it.name} · ${it.label ?? "unlabelled"}${pred}`;
  const r = canvas.getBoundingClientRect();
  tip.style.left = `${e.clientX - r.left + 14}px`; tip.style.top = `${e.clientY - r.top + 14}px`;
  tip.hidden = false;
}

canvas.addEventListener("pointerdown", (e) => {
  if (!state.xy) return;
  try { canvas.setPointerCapture(e.pointerId); } catch { /* synthetic events have no active pointer */ }
  const p = canvasPoint(e);
  drag = { mode: e.shiftKey ? "pan" : $("select-mode").value, path: [p], start: p, tx: view.tx, ty: view.ty };
});
canvas.addEventListener("pointermove", (e) => {
  const p = canvasPoint(e);
  if (drag) {
    if (drag.mode === "pan") { view.tx = drag.tx + p[0] - drag.start[0]; view.ty = drag.ty + p[1] - drag.start[1]; grid = null; }
    else drag.path.push(p);
    requestDraw();
    return;
  }
  const i = pick(p[0], p[1]);
  if (i !== hoverIndex) { hoverIndex = i; requestDraw(); }
  showTooltip(i, e);
});
canvas.addEventListener("pointerleave", () => { if (!drag) { hoverIndex = -1; $("tooltip").hidden = true; requestDraw(); } });
canvas.addEventListener("pointerup", (e) => {
  if (!drag) return;
  const p = canvasPoint(e);
  const moved = Math.hypot(p[0] - drag.start[0], p[1] - drag.start[1]) > 4;
  const d = drag; drag = null;
  if (!moved) { const i = pick(p[0], p[1]); if (i >= 0) showNeighbours(i); requestDraw(); return; }
  if (d.mode === "pan") { requestDraw(); return; }
  selectInside(d);
});
canvas.addEventListener("wheel", (e) => {
  if (!state.xy) return;
  e.preventDefault();
  const [x, y] = canvasPoint(e);
  const f = Math.exp(-e.deltaY * 0.0015);
  // Zoom about the cursor.
  view.tx = x - canvas.width / 2 - (x - canvas.width / 2 - view.tx) * f;
  view.ty = y - canvas.height / 2 - (y - canvas.height / 2 - view.ty) * f;
  view.scale *= f; grid = null; requestDraw();
}, { passive: false });

function insidePolygon(x, y, poly) {
  let inside = false;
  for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
    const [xi, yi] = poly[i], [xj, yj] = poly[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}
function selectInside(d) {
  const pos = state.screen;
  state.selection.clear();
  const [a, b] = [d.path[0], d.path[d.path.length - 1]];
  for (let i = 0; i < state.items.length; i++) {
    const x = pos[2 * i], y = pos[2 * i + 1];
    const hit = d.mode === "box"
      ? x >= Math.min(a[0], b[0]) && x <= Math.max(a[0], b[0]) && y >= Math.min(a[1], b[1]) && y <= Math.max(a[1], b[1])
      : insidePolygon(x, y, d.path);
    if (hit) state.selection.add(i);
  }
  showSelection();
  requestDraw();
}

// Draw a tile's thumbnail into `c` (a new canvas by default), at its own size or scaled so its
// longer side is `side` pixels.
function drawThumb(it, c = document.createElement("canvas"), side = null) {
  const s = side ? side / Math.max(...it.thumbSize) : 1;
  c.width = Math.round(it.thumbSize[0] * s); c.height = Math.round(it.thumbSize[1] * s);
  c.getContext("2d").drawImage(it.thumb, 0, 0, c.width, c.height);
  return c;
}

function thumbFigure(i, caption) {
  const it = state.items[i];
  const fig = document.createElement("figure");
  const c = drawThumb(it);
  c.title = it.name;
  const cap = document.createElement("figcaption"); cap.textContent = caption;
  fig.append(c, cap);
  return fig;
}

async function showNeighbours(i) {
  const k = Math.max(1, Number($("k").value) || 8);
  const { out } = await ask("neighbours", { index: i, k });
  const box = $("neighbours"); box.innerHTML = "";
  const head = document.createElement("div");
  head.style.width = "100%";
  head.textContent = `${k} nearest neighbours (cosine) of ${state.items[i].name}:`;
  box.append(head, thumbFigure(i, `query · ${state.items[i].label ?? "unlabelled"}`));
  const idx = [];
  for (let j = 0; j < out.length; j += 2) {
    const n = out[j];
    idx.push(n);
    box.appendChild(thumbFigure(n, `${out[j + 1].toFixed(3)} · ${state.items[n].label ?? "unlabelled"}`));
  }
  state.lastNeighbours = { query: i, neighbours: idx };
  setStage("neighbours-shown");
}

function showSelection() {
  const sel = [...state.selection];
  const counts = new Map();
  for (const i of sel) { const l = state.items[i].label ?? "unlabelled"; counts.set(l, (counts.get(l) || 0) + 1); }
  const box = $("selection"); box.innerHTML = "";
  const p = document.createElement("p");
  p.textContent = sel.length ? `${sel.length} selected: ` + [...counts].map(([l, c]) => `${l} ${c}`).join(", ") : "Nothing selected.";
  box.appendChild(p);
  const strip = document.createElement("div"); strip.className = "thumbs";
  for (const i of sel.slice(0, 60)) strip.appendChild(thumbFigure(i, state.items[i].label ?? "unlabelled"));
  box.appendChild(strip);
}

// ---------- probe ----------
function groupOf(it) {
  const by = $("group-by").value;
  if (by === "none") return "";
  if (by === "prefix") { const base = it.name.split("/").pop(); const m = base.match(/^([^_-]+)[_-]/); return m ? m[1] : ""; }
  return it.group || "";
}

$("run-probe").onclick = async () => {
  const rows = [], labels = [], groups = [];
  const classes = [...new Set(state.items.map((it) => it.label).filter((l) => l !== null))].sort();
  const index = new Map(classes.map((c, i) => [c, i]));
  state.items.forEach((it, i) => { if (it.label !== null) { rows.push(i); labels.push(index.get(it.label)); groups.push(groupOf(it)); } });
  const cGrid = $("c-grid").value.split(",").map(Number).filter((c) => c > 0 && Number.isFinite(c));
  const kind = $("probe-kind").value;
  status("probe-status", `Cross-validating ${kind === "svm" ? "a linear SVM" : "logistic regression"} on ${rows.length} labelled tiles, ${classes.length} classes…`);
  $("run-probe").disabled = true;
  try {
    const r = await ask("probe", {
      rows, labels, groups, classes, cGrid, folds: Number($("folds").value) || 5, seed: 0, kind,
      card: JSON.stringify(state.card), sha256: state.modelSha256,
    });
    state.probe = { classes, kind, ...r, rows };
    showProbe();
    $("export-predictions").disabled = false; $("export-probe").disabled = false;
    if ($("colour-by").value === "prediction") requestDraw();
    setStage("probe-done");
  } catch (err) {
    status("probe-status", `Probe failed: ${err.message}`, true);
  }
  $("run-probe").disabled = false;
};

function escapeHtml(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]); }

function showProbe() {
  const { cv, classes, cvMs, fitMs } = state.probe;
  const chance = 1 / classes.length;
  status("probe-status", `Grouped ${cv.folds}-fold cross-validation: accuracy ${(100 * cv.accuracy).toFixed(1)}%, ` +
    `balanced accuracy ${(100 * cv.balanced_accuracy).toFixed(1)}% (chance ${(100 * chance).toFixed(1)}%) at C = ${cv.best_c}; ` +
    `CV ${(cvMs / 1000).toFixed(1)} s, final fit ${(fitMs / 1000).toFixed(2)} s.`);
  let html = "<table id='cv-table'><tr><th>C</th><th>balanced accuracy</th><th>accuracy</th><th>folds used</th></tr>";
  for (const s of cv.scores) {
    const best = s.c === cv.best_c ? " class='best'" : "";
    html += `<tr><td${best}>${s.c}</td><td${best}>${(100 * s.balanced_accuracy).toFixed(1)}%</td><td${best}>${(100 * s.accuracy).toFixed(1)}%</td><td>${s.folds_used}</td></tr>`;
  }
  html += "</table><table id='confusion'><tr><th class='name'>true \\ predicted (out of fold)</th>" + classes.map((c) => `<th>${escapeHtml(c)}</th>`).join("") + "</tr>";
  cv.confusion.forEach((row, t) => {
    html += `<tr><th class='name'>${escapeHtml(classes[t])}</th>` + row.map((v, p) => `<td${p === t ? " class='best'" : ""}>${v}</td>`).join("") + "</tr>";
  });
  $("probe-results").innerHTML = html + "</table>";
  showPredictions("confidence", false);
}

function predictionRows() {
  const { scores, pred, classes, kind } = state.probe;
  const n = state.items.length, w = scores.length / n;
  const rows = [];
  for (let i = 0; i < n; i++) {
    const it = state.items[i];
    const s = Array.from(scores.slice(i * w, (i + 1) * w));
    rows.push({ i, name: it.name, label: it.label, predicted: classes[pred[i]], scores: s,
      confidence: kind === "logistic" ? Math.max(...s) : Math.max(...s.map(Math.abs)) });
  }
  return rows;
}

let sortKey = "confidence", sortDesc = false;
function showPredictions(key = sortKey, toggle = true) {
  if (toggle && key === sortKey) sortDesc = !sortDesc; else if (toggle) sortDesc = key === "confidence" ? false : false;
  sortKey = key;
  const { classes, kind } = state.probe;
  const unl = predictionRows().filter((r) => r.label === null);
  const box = $("predictions");
  if (!unl.length) { box.innerHTML = "<p class='hint'>No unlabelled tiles to classify: drop loose files or a folder named <code>unlabelled</code> with the labelled ones.</p>"; return; }
  const val = (r) => (key === "name" ? r.name : key === "predicted" ? r.predicted : key === "confidence" ? r.confidence : r.scores[Number(key)]);
  unl.sort((a, b) => { const x = val(a), y = val(b); const c = typeof x === "string" ? x.localeCompare(y) : x - y; return sortDesc ? -c : c; });
  const scoreCols = kind === "logistic" ? classes : (unl[0].scores.length === 1 ? [`decision (${classes[1]})`] : classes);
  const table = document.createElement("table"); table.id = "predictions-table";
  const head = document.createElement("tr");
  const th = (text, k, cls = "") => { const h = document.createElement("th"); h.textContent = text + (k === sortKey ? (sortDesc ? " ▼" : " ▲") : ""); h.className = `sortable ${cls}`; h.onclick = () => showPredictions(k); return h; };
  head.append(document.createElement("th"), th("tile", "name", "name"), th("predicted", "predicted"), th("confidence", "confidence"),
    ...scoreCols.map((c, j) => th(kind === "logistic" ? `p(${c})` : c, String(j))));
  table.appendChild(head);
  for (const r of unl.slice(0, 2000)) {
    const tr = document.createElement("tr");
    const tdT = document.createElement("td");
    const it = state.items[r.i];
    tdT.appendChild(drawThumb(it, document.createElement("canvas"), 40));
    const td = (t, cls = "") => { const d = document.createElement("td"); d.textContent = t; d.className = cls; return d; };
    tr.append(tdT, td(r.name, "name"), td(r.predicted, "name"), td(r.confidence.toFixed(3)), ...r.scores.map((v) => td(v.toFixed(3))));
    table.appendChild(tr);
  }
  box.innerHTML = `<p>${unl.length} unlabelled tiles classified${unl.length > 2000 ? " (first 2,000 shown; export for all)" : ""}; click a column to sort.</p>`;
  box.appendChild(table);
}

// ---------- exports ----------
function download(name, data, type) {
  const url = URL.createObjectURL(new Blob([data], { type }));
  const a = document.createElement("a");
  a.href = url; a.download = name; document.body.appendChild(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
const csvField = (s) => (/[",\n]/.test(String(s)) ? `"${String(s).replace(/"/g, '""')}"` : String(s));

async function featuresSafetensorsBytes() {
  const mod = await import("./pkg/mtpath_web.js");
  await mod.default();
  const names = state.items.map((it) => it.name);
  const meta = {
    architecture: state.card.architecture,
    weights: state.modelName,
    weights_sha256: state.modelSha256,
    labels: JSON.stringify(state.items.map((it) => it.label)),
    groups: JSON.stringify(state.items.map((it) => it.group)),
    preprocess: JSON.stringify({ resize_shorter: state.card.resize, crop: state.card.input_size, mean: state.card.mean, std: state.card.std }),
  };
  return mod.featuresSafetensors(state.features, state.items.length, state.dim, names, JSON.stringify(meta));
}
window.mtpathFeaturesSafetensors = featuresSafetensorsBytes;

$("export-features").onclick = async () => download("features.safetensors", await featuresSafetensorsBytes(), "application/octet-stream");
$("export-features-csv").onclick = () => {
  const d = state.dim;
  let out = "file,label,group," + Array.from({ length: d }, (_, j) => `f${j}`).join(",") + "\n";
  state.items.forEach((it, i) => {
    out += `${csvField(it.name)},${csvField(it.label ?? "")},${csvField(it.group)},` + Array.from(state.features.subarray(i * d, (i + 1) * d), (v) => v.toPrecision(8)).join(",") + "\n";
  });
  download("features.csv", out, "text/csv");
};
$("export-map").onclick = () => {
  let out = `file,label,${state.projection}_x,${state.projection}_y\n`;
  state.items.forEach((it, i) => { out += `${csvField(it.name)},${csvField(it.label ?? "")},${state.xy[2 * i]},${state.xy[2 * i + 1]}\n`; });
  download(`map-${state.projection}.csv`, out, "text/csv");
};
export function predictionsCsv() {
  const { classes, kind } = state.probe;
  const rows = predictionRows();
  const w = rows[0]?.scores.length ?? 0;
  const cols = kind === "logistic" ? classes.map((c) => `p_${c}`) : (w === 1 ? [`decision_${classes[1]}`] : classes.map((c) => `decision_${c}`));
  let out = "file,predicted," + cols.map(csvField).join(",") + ",label\n";
  for (const r of rows) out += `${csvField(r.name)},${csvField(r.predicted)},${r.scores.map((v) => v.toFixed(6)).join(",")},${csvField(r.label ?? "")}\n`;
  return out;
}
window.mtpathPredictionsCsv = predictionsCsv;
$("export-predictions").onclick = () => download("predictions.csv", predictionsCsv(), "text/csv");
$("export-probe").onclick = () => download("probe.json", state.probe.json, "application/json");

// One extraction worker per core (up to 4): each runs its own single-threaded wasm instance.
$("workers").value = String(Math.max(1, Math.min(4, navigator.hardwareConcurrency || 2)));
setStage("ready");
offerServerModels();
