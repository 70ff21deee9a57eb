// mtpath feature explorer: the page's entry point. It wires the stages together; each stage is
// a module under app/ (model → ingest → extract → map → probe → export), and the shared state
// lives in app/state.js. Everything runs on this machine: no file leaves the browser.
import { $, state, status, setStage } from "./app/state.js";
import { ask } from "./app/analysis.js";
import * as extract from "./app/extract.js";
import { readTiles, walkEntry } from "./app/ingest.js";
import { project, requestDraw } from "./app/map.js";
import { offerServerModels, wireModelPanel, workersWanted } from "./app/model.js";
import { predictionsCsv } from "./app/export.js";
import { isSlide, planSlides, showSlides } from "./app/slide.js";
import "./app/probe.js";

const THUMB = 96;

window.mtpathApp = state; // for tests and the curious: the page's state, read-only by convention
window.mtpathPredictionsCsv = predictionsCsv;

/** Embed the tiles of `entries` ([{ file, path }]) and of the slides among them (or every
 * entry when `allSlides`), and show what came of them. */
async function ingest(entries, allSlides = false) {
  if (!state.modelBytes) { status("input-status", "Load a model first (step 1).", true); return; }
  const run = ++state.run;
  const slideEntries = entries.filter((e) => allSlides || isSlide(e.file));
  const tileEntries = entries.filter((e) => !slideEntries.includes(e));
  const { items, skipped } = tileEntries.length ? await readTiles(tileEntries, state.extensions) : { items: [], skipped: [] };
  if (run !== state.run) return;
  const planned = await planSlides(slideEntries.map((e) => e.file));
  if (run !== state.run) return;
  skipped.push(...planned.skipped);
  await runExtraction(run, [...items, ...planned.items], skipped, planned.slides);
}
/** Embed `items` (tiles, and the tiles of `slides`) for the drop numbered `run`; a newer drop
 * cancels this one, which then returns without touching the page. */
async function runExtraction(run, items, skipped, slides) {
  const nWorkers = workersWanted();
  const d = state.card.feature_dim;
  const t0 = performance.now();
  setStage("extracting");
  $("progress").hidden = false;
  state.mapReady = false; state.probe = null; state.selection.clear();
  // The previous tiles' probe goes now, its status line too (it may say "Cross-validating…"
  // for a probe this drop superseded); a probe waits for the new features.
  $("probe-results").innerHTML = ""; status("probe-status", "");
  $("run-probe").disabled = true; $("export-predictions").disabled = true; $("export-probe").disabled = true;
  const update = (done, total) => {
    const elapsed = (performance.now() - t0) / 1000;
    const rate = done / Math.max(elapsed, 1e-3);
    const eta = (total - done) / Math.max(rate, 1e-9);
    $("progress-bar").max = total; $("progress-bar").value = done;
    $("progress-text").textContent = `${done} / ${total} · ${rate.toFixed(1)} images/s · ETA ${done ? eta.toFixed(0) : "–"} s`;
  };
  update(0, items.length);
  $("cancel").onclick = () => extract.cancel();
  let results, cancelled;
  try {
    ({ results, cancelled } = await extract.extract(items.map((it) => it.task ?? it.file), { count: nWorkers, thumb: THUMB, transform: $("eval-transform").value, onProgress: update }));
  } catch (err) {
    if (run !== state.run) return;
    $("progress").hidden = true;
    status("input-status", `Extraction failed: ${err.message}`, true);
    return;
  }
  if (run !== state.run) return; // a newer drop took over (and cancelled this extraction)
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
    const { r, file, task, ...meta } = kept[i];
    features.set(r.features, i * d);
    if (task) { newItems.push({ ...meta, size: [meta.crop[2], meta.crop[3]] }); continue; } // a slide tile: thumbnail from the slide
    const img = new ImageData(new Uint8ClampedArray(r.thumb.buffer), r.width, r.height);
    const thumb = await createImageBitmap(img);
    newItems.push({ ...meta, file, thumb, thumbSize: [r.width, r.height], size: [r.sourceWidth, r.sourceHeight] });
  }
  if (run !== state.run) return;
  const seconds = (performance.now() - t0) / 1000;
  const workers = extract.workerCount();
  const threads = extract.workerThreads();
  state.items = newItems; state.features = features; state.dim = d; state.skipped = skipped;
  state.xy = null; requestDraw(); // the old map goes: its points were other tiles
  state.slides = slides;
  showSlides();
  state.evalTransform = $("eval-transform").value;
  state.stats = { seconds, imagesPerSecond: kept.length / Math.max(seconds, 1e-9), workers, threads, cancelled };
  showSkipped();
  const labels = new Set(newItems.map((it) => it.label).filter((l) => l !== null));
  const unl = newItems.filter((it) => it.label === null).length;
  status("input-status", `${cancelled ? "Cancelled: " : ""}${kept.length} tiles embedded in ${seconds.toFixed(1)} s ` +
    `(${state.stats.imagesPerSecond.toFixed(1)} images/s, ${workers} worker${workers > 1 ? "s" : ""}` +
    `${threads > 1 ? ` × ${threads} threads` : ""}); ` +
    `${labels.size} labels, ${unl} unlabelled${skipped.length ? `, ${skipped.length} skipped` : ""}.`);
  setStage("extracted");
  ["export-features", "export-features-csv", "export-map"].forEach((b) => ($(b).disabled = !kept.length));
  $("export-map").disabled = kept.length < 2;
  $("run-probe").disabled = labels.size < 2;
  $("predictions").innerHTML = ""; $("neighbours").innerHTML = "";
  // The analysis worker holds the one feature matrix (map, neighbours, probe, features file).
  if (kept.length) await ask("data", { x: features.slice(0), n: kept.length, d });
  if (run !== state.run) return;
  if (kept.length >= 2) await project($("projection").value);
  else status("map-status", "At least two tiles are needed for a map.");
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
$("slides-input").onchange = (e) => {
  const files = [...e.target.files].map((f) => ({ file: f, path: f.name }));
  e.target.value = "";
  ingest(files, true);
};
$("files-input").onchange = (e) => {
  const files = [...e.target.files].map((f) => ({ file: f, path: f.name }));
  e.target.value = "";
  ingest(files);
};

wireModelPanel();
// One extraction worker per core (up to 4): each runs its own single-threaded wasm instance.
$("workers").value = String(Math.max(1, Math.min(4, navigator.hardwareConcurrency || 2)));
setStage("ready");
offerServerModels();
