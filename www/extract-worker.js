// Extraction worker: one wasm instance and one model, parsed once per model load and kept for
// every later drop; embeds the files it is sent, one at a time, and answers with the features and a thumbnail (or the reason a file was skipped).
import init, { FeatureModel, imageExtensions } from "./pkg/mtpath_web.js";

let model = null;
const ready = init();

self.onmessage = async (event) => {
  const msg = event.data;
  await ready;
  if (msg.type === "model") {
    try {
      model = new FeatureModel(new Uint8Array(msg.bytes));
      self.postMessage({ type: "model-ready", card: JSON.parse(model.cardJson()), extensions: imageExtensions() });
    } catch (err) {
      self.postMessage({ type: "model-error", error: String(err.message || err) });
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
