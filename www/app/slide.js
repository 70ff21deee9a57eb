// Whole-slide images: dropped slides are planned in a worker (thumbnail, tissue, tiles at the
// chosen µm/px), their tiles embedded like any others (read piece by piece from the File, no
// tile ever written), and shown here over the slide: tissue and tiles, then each tile's
// prediction as a heatmap once a probe has run; a click reads the tile at full resolution.
import { $, state, status, setStage, escapeHtml } from "./state.js";
import { ask } from "./analysis.js";
import * as extract from "./extract.js";

/** Whether a dropped file is a slide rather than a tile: `.svs`, OME-TIFF, or a TIFF over
 * 16 MiB (tiles are small; "Pick slides" treats every file as a slide). */
export function isSlide(file) {
  const n = file.name.toLowerCase();
  return n.endsWith(".svs") || /\.ome\.tiff?$/.test(n) || (/\.(tiff?|btf)$/.test(n) && file.size > 16 * 2 ** 20);
}

/** How slides are cut, from the page's controls. */
export function cutFromPage() {
  const own = Number($("slide-own-mpp").value);
  return {
    size: Math.max(16, Number($("slide-size").value) || 224),
    mpp: Number($("slide-mpp").value) || null,
    level: null,
    minTissue: Math.min(1, Math.max(0, Number($("slide-tissue").value))),
    slideMpp: own > 0 ? own : null,
    thumbnail: null, // the command line's default, so both keep the same tiles
  };
}

const bitmap = (rgba, w, h) => createImageBitmap(new ImageData(new Uint8ClampedArray(rgba.buffer), w, h));

/** Plan `files` (slides): returns `{ slides, items, skipped }`, the items being their tiles
 * (unlabelled, grouped by slide) with `task` for the extraction workers. */
export async function planSlides(files) {
  const cut = cutFromPage();
  const slides = [], items = [], skipped = [];
  for (const file of files) {
    status("input-status", `Reading ${file.name}: thumbnail and tissue…`);
    let r;
    try { r = await extract.planSlide(file, cut); } catch (err) { skipped.push({ name: file.name, reason: err.message }); continue; }
    const { plan } = r;
    const [tw, th, scale] = plan.thumbnail;
    const slide = {
      file, cut, plan, scale, width: tw, height: th, thumbnail: r.thumbnail,
      thumb: await bitmap(r.thumbnail, tw, th), overview: await bitmap(r.overview, tw, th), index: slides.length,
    };
    slides.push(slide);
    const fp = plan.footprint / scale;
    for (const [x, y, tissue] of plan.tiles) {
      items.push({
        name: `${file.name}@x${x}_y${y}`, label: null, group: file.name, slide: slide.index, x, y, tissue,
        task: { slide: { file, cut }, x, y }, thumb: slide.thumb, thumbSize: [64, 64], crop: [x / scale, y / scale, fp, fp],
      });
    }
    if (!plan.tiles.length) skipped.push({ name: file.name, reason: `no tile has ${cut.minTissue} tissue or more; lower "min tissue"` });
  }
  return { slides, items, skipped };
}

/** Show the slides of the current extraction (tissue and tiles). */
export function showSlides() {
  const box = $("slides"); box.innerHTML = ""; $("slide-zoom").innerHTML = "";
  $("slide-panel").hidden = !state.slides.length;
  state.slides.forEach((s) => {
    s.rows = [];
    const fig = document.createElement("figure");
    const c = document.createElement("canvas"); c.width = s.width; c.height = s.height; c.className = "slide-canvas";
    c.dataset.slide = String(s.index);
    c.onclick = (e) => zoom(s, c, e);
    const cap = document.createElement("figcaption");
    const p = s.plan;
    cap.textContent = `${s.file.name}: ${p.format}, ${p.dimensions[0]}×${p.dimensions[1]} px, ${p.levels.length} level(s), ` +
      `${p.slideMpp ? `${p.slideMpp.toFixed(3)} µm/px` : "µm/px unknown"}; ${p.tiles.length} tiles of ${p.size} px` +
      `${p.tileMpp ? ` at ${p.tileMpp.toFixed(2)} µm/px` : ` from level ${p.readLevel}`}, tissue ${(100 * p.coverage).toFixed(0)}%`;
    fig.append(c, cap); box.appendChild(fig);
    s.canvas = c;
  });
  state.items.forEach((it, i) => { if (it.slide !== undefined) state.slides[it.slide].rows.push(i); });
  const sel = $("slide-show");
  sel.innerHTML = "<option value='tiles'>tissue and tiles</option>";
  drawSlides();
}

/** Redraw every slide as the "Show" choice says. */
export async function drawSlides() {
  const mode = $("slide-show").value;
  for (const s of state.slides) {
    const ctx = s.canvas.getContext("2d");
    if (mode === "tiles" || !state.probe) { ctx.drawImage(s.overview, 0, 0); continue; }
    const { scores, pred, classes, kind } = state.probe;
    const n = state.items.length, w = scores.length / n;
    const rows = s.rows;
    const xy = rows.flatMap((i) => [state.items[i].x, state.items[i].y]);
    let values, cls = [];
    if (mode === "predicted") {
      values = rows.map((i) => (kind === "logistic" ? Math.max(...scores.slice(i * w, (i + 1) * w)) : 1));
      cls = rows.map((i) => pred[i]);
    } else {
      const c = Number(mode);
      values = rows.map((i) => scores[i * w + c]);
    }
    const { pixels } = await ask("heatmap", {
      thumbnail: s.thumbnail.slice(0), width: s.width, height: s.height, scale: s.scale, footprint: s.plan.footprint, xy, values, classes: cls,
    });
    ctx.putImageData(new ImageData(new Uint8ClampedArray(pixels.buffer), s.width, s.height), 0, 0);
  }
  document.body.dataset.slides = mode === "tiles" || !state.probe ? "tiles" : "heatmap";
}

/** After a probe: offer each class's probability (logistic) and the predicted class. */
export function offerHeatmaps() {
  if (!state.slides.length || !state.probe) return;
  const { classes, kind } = state.probe;
  const sel = $("slide-show");
  let html = "<option value='tiles'>tissue and tiles</option><option value='predicted'>predicted class</option>";
  if (kind === "logistic") html += classes.map((c, i) => `<option value='${i}'>p(${escapeHtml(c)})</option>`).join("");
  sel.innerHTML = html;
  sel.value = kind === "logistic" && classes.length === 2 ? "1" : "predicted";
  drawSlides().then(() => setStage("heatmap-drawn"));
}

$("slide-show").onchange = () => drawSlides();

/** A click on slide `s`'s canvas: the tile under it at full resolution, with its prediction. */
async function zoom(s, canvas, e) {
  const r = canvas.getBoundingClientRect();
  const x0 = ((e.clientX - r.left) * canvas.width) / r.width * s.scale;
  const y0 = ((e.clientY - r.top) * canvas.height) / r.height * s.scale;
  const fp = s.plan.footprint;
  const i = s.rows.find((k) => { const it = state.items[k]; return x0 >= it.x && x0 < it.x + fp && y0 >= it.y && y0 < it.y + fp; });
  if (i === undefined) return;
  const it = state.items[i];
  try {
    const { pixels } = await extract.slideTile(s.file, s.cut, it.x, it.y);
    const size = s.plan.size;
    const c = document.createElement("canvas"); c.width = size; c.height = size;
    c.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(pixels.buffer), size, size), 0, 0);
    const fig = document.createElement("figure");
    const cap = document.createElement("figcaption");
    const pred = state.probe ? ` · predicted ${state.probe.classes[state.probe.pred[i]]}` : "";
    cap.textContent = `${it.name}${pred}`;
    fig.append(c, cap);
    $("slide-zoom").replaceChildren(fig);
  } catch (err) {
    status("input-status", `Cannot read that tile: ${err.message}`, true);
  }
}
