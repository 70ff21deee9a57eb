// The page's shared state and the small DOM helpers every stage uses.

/** The element with id `id`. */
export const $ = (id) => document.getElementById(id);

/** Everything the page knows: one object, written by the stage modules, read by all. */
export const state = {
  modelBytes: null, modelName: "", modelSha256: "", card: null,
  extensions: [],     // file extensions the model crate's decoder reads (from the wasm module)
  items: [],          // { name, path, label, group, thumb: ImageBitmap, thumbSize: [w, h] }; slide
                      // tiles add slide (index into slides), x, y and crop (their part of thumb)
  slides: [],         // { file, cut, plan, thumbnail (RGBA), thumb: ImageBitmap, overview: ImageBitmap, rows: [item index] }
  features: null,     // Float32Array n × d, rows in items order
  evalTransform: "resize", // how the tiles became input (resize, center-crop, grid)
  dim: 0,
  skipped: [],        // { name, reason }
  xy: null,           // Float32Array n × 2
  projection: "", mapReady: false,
  selection: new Set(),
  probe: null,        // { classes, cv, scores, pred, json, kind }
  run: 0,             // bumped by every drop: work begun for an older drop (extraction, map,
                      // probe) sees the change after its awaits and leaves the page alone
  stats: null,
};

// Milestones as body attributes (data-stage: the latest step; data-map, data-probe,
// data-neighbours: what is on the page), for people reading the DOM and for tests.
export function setStage(stage) {
  const ds = document.body.dataset;
  ds.stage = stage;
  if (stage === "map-drawn") ds.map = state.projection;
  if (stage === "probe-done") ds.probe = "done";
  if (stage === "neighbours-shown") ds.neighbours = "shown";
  if (stage === "extracting") { delete ds.map; delete ds.probe; delete ds.neighbours; }
}

/** Show `text` in the status line `el`, red when `error`. */
export function status(el, text, error = false) {
  $(el).textContent = text;
  $(el).classList.toggle("error", error);
}

/** `s` with HTML's special characters escaped. */
export function escapeHtml(s) {
  return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

/** Draw a tile's thumbnail into `c` (a new canvas by default), at its own size or scaled so
 * its longer side is `side` pixels. */
export function drawThumb(it, c = document.createElement("canvas"), side = null) {
  const s = side ? side / Math.max(...it.thumbSize) : 1;
  c.width = Math.round(it.thumbSize[0] * s); c.height = Math.round(it.thumbSize[1] * s);
  const ctx = c.getContext("2d");
  if (it.crop) ctx.drawImage(it.thumb, ...it.crop, 0, 0, c.width, c.height); // a slide tile: its part of the slide's thumbnail
  else ctx.drawImage(it.thumb, 0, 0, c.width, c.height);
  return c;
}
