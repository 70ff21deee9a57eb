// Extraction worker: one wasm instance and one model, parsed once per model load and kept for
// every later drop; embeds the files it is sent, one at a time, and answers with the features and a thumbnail (or the reason a file was skipped).
//
// The bindings are chosen by the first message: a `model` message asking for more than one
// thread loads the threaded module where it can (bindings.js: each tile's convolutions split
// over a rayon pool of that many threads), anything else the single-threaded one.
import { loadBindings } from "./bindings.js";

let model = null;
let bindings = null; // Promise of the bindings module, fixed by the first message
// The slide this worker reads tiles of, opened once per slide and cut: { key, reader }.
let slide = null;

/** The reader of `file` planned for `cut` (every grid tile; the page chose which to embed). */
function slideReader(m, file, cut) {
  const key = `${file.name}|${file.size}|${file.lastModified}|${JSON.stringify(cut)}`;
  if (!slide || slide.key !== key) {
    if (slide) slide.reader.free();
    slide = null;
    const reader = new m.SlideReader(file, file.name);
    reader.plan(JSON.stringify(cut), false);
    slide = { key, reader };
  }
  return slide.reader;
}

self.onmessage = async (event) => {
  const msg = event.data;
  if (!bindings) bindings = loadBindings(msg.type === "model" ? msg.threads ?? 1 : 1, "extracting");
  const { m, threads } = await bindings;
  if (msg.type === "model") {
    try {
      model = new m.FeatureModel(new Uint8Array(msg.bytes));
      self.postMessage({ type: "model-ready", card: JSON.parse(model.cardJson()), extensions: m.imageExtensions(), threads });
    } catch (err) {
      self.postMessage({ type: "model-error", error: String(err.message || err) });
    }
  } else if (msg.type === "slide-plan") {
    // Open a slide, find its tissue and plan its tiles; answer with the plan, the thumbnail
    // and the overview (tissue mask and tiles drawn over it).
    try {
      const reader = new m.SlideReader(msg.file, msg.file.name);
      const plan = JSON.parse(reader.plan(JSON.stringify(msg.cut), true));
      const thumbnail = reader.thumbnail();
      const overview = reader.overview();
      reader.free();
      self.postMessage({ type: "slide-planned", plan, thumbnail, overview }, [thumbnail.buffer, overview.buffer]);
    } catch (err) {
      self.postMessage({ type: "slide-failed", error: String(err.message || err) });
    }
  } else if (msg.type === "slide-zoom") {
    try {
      const pixels = slideReader(m, msg.file, msg.cut).tile(msg.x, msg.y);
      self.postMessage({ type: "slide-zoomed", pixels }, [pixels.buffer]);
    } catch (err) {
      self.postMessage({ type: "slide-failed", error: String(err.message || err) });
    }
  } else if (msg.type === "slide-tile") {
    const t0 = performance.now();
    try {
      if (!model) throw new Error("no model loaded");
      if (msg.transform && model.evalTransform !== msg.transform) model.setEvalTransform(msg.transform);
      const features = model.extractSlideTile(slideReader(m, msg.file, msg.cut), msg.x, msg.y);
      self.postMessage({ type: "done", job: msg.job, id: msg.id, features, ms: performance.now() - t0 }, [features.buffer]);
    } catch (err) {
      self.postMessage({ type: "failed", job: msg.job, id: msg.id, error: String(err.message || err) });
    }
  } else if (msg.type === "extract") {
    const t0 = performance.now();
    try {
      if (!model) throw new Error("no model loaded");
      if (msg.transform && model.evalTransform !== msg.transform) model.setEvalTransform(msg.transform);
      const bytes = new Uint8Array(await msg.file.arrayBuffer());
      const out = model.extractWithThumbnail(bytes, msg.thumb);
      const features = out.features;
      const thumb = out.thumbnail;
      self.postMessage({
        type: "done", job: msg.job, id: msg.id, features, thumb, width: out.width, height: out.height,
        sourceWidth: out.sourceWidth, sourceHeight: out.sourceHeight, ms: performance.now() - t0,
      }, [features.buffer, thumb.buffer]);
      out.free();
    } catch (err) {
      self.postMessage({ type: "failed", job: msg.job, id: msg.id, error: String(err.message || err) });
    }
  }
};
