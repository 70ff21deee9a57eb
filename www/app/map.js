// The map: PCA or t-SNE of the features (in the analysis worker), drawn on a canvas with
// colours by label, prediction or group; hover, box and lasso selection, pan, zoom, and a
// click for a tile's nearest neighbours.
import { $, state, status, setStage, escapeHtml, drawThumb } from "./state.js";
import { ask } from "./analysis.js";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#17becf", "#bcbd22", "#7f7f7f", "#393b79", "#ad494a", "#637939", "#843c39", "#5254a3", "#6b6ecf"];
const UNLABELLED_COLOUR = "#9a9a9a";

/** Project the features to 2-d with `kind` ("pca" or "tsne") and draw the map. */
export async function project(kind) {
  const n = state.items.length;
  if (n < 2) return;
  // A newer drop while this runs: its answer is for the old tiles and is dropped.
  const run = state.run;
  if (kind === "pca") {
    await ask("cancel-tsne");
    const t0 = performance.now();
    const r = await ask("pca");
    if (run !== state.run) return;
    setMap(r.xy, "pca");
    status("map-status", `PCA of ${n} tiles in ${(performance.now() - t0).toFixed(0)} ms; ` +
      `axes explain ${(100 * r.variance[0]).toFixed(1)}% and ${(100 * r.variance[1]).toFixed(1)}% of the variance.`);
  } else {
    const perplexity = Number($("perplexity").value) || 30;
    status("map-status", `t-SNE of ${n} tiles: computing affinities…`);
    try {
      const r = await ask("tsne", { perplexity, seed: 0 }, (p) => {
        if (run !== state.run) return;
        setMap(p.xy, "tsne", false);
        status("map-status", `t-SNE: iteration ${p.iteration} / ${p.total} (${(p.ms / 1000).toFixed(1)} s)`);
      });
      if (run !== state.run) return;
      setMap(r.xy, "tsne");
      status("map-status", `t-SNE done: ${n} tiles, perplexity ${perplexity}, ${r.total} iterations in ${(r.ms / 1000).toFixed(1)} s.`);
    } catch (err) { if (run === state.run) status("map-status", `t-SNE failed: ${err.message}`, true); }
  }
}
$("projection").onchange = (e) => project(e.target.value);
$("perplexity").onchange = () => $("projection").value === "tsne" && project("tsne");

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

/** Redraw the map at the next animation frame. */
export function requestDraw() { if (!drawQueued) { drawQueued = true; requestAnimationFrame(draw); } }
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
  if (sel.length) box.appendChild(labelControls(sel));
  const strip = document.createElement("div"); strip.className = "thumbs";
  for (const i of sel.slice(0, 60)) strip.appendChild(thumbFigure(i, state.items[i].label ?? "unlabelled"));
  box.appendChild(strip);
}

/** "Label these tiles as …": the selection (box or lasso on the map, e.g. over a slide's
 * tiles) gets a label, or loses it, so a probe can be trained on tiles labelled here. */
function labelControls(sel) {
  const row = document.createElement("div"); row.className = "row";
  const input = document.createElement("input"); input.id = "selection-label"; input.placeholder = "label"; input.size = 14;
  const apply = document.createElement("button"); apply.type = "button"; apply.id = "label-selection";
  apply.textContent = `Label these ${sel.length} tiles`;
  const clear = document.createElement("button"); clear.type = "button"; clear.textContent = "Unlabel them";
  const set = (label) => {
    for (const i of sel) state.items[i].label = label;
    const labels = new Set(state.items.map((it) => it.label).filter((l) => l !== null));
    $("run-probe").disabled = labels.size < 2;
    status("map-status", `${sel.length} tiles ${label === null ? "unlabelled" : `labelled ${label}`}; ${labels.size} labels in all.`);
    showSelection(); requestDraw();
  };
  apply.onclick = () => { const l = input.value.trim(); if (l) set(l); else input.focus(); };
  clear.onclick = () => set(null);
  row.append(input, apply, clear);
  return row;
}

