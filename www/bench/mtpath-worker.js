// mtpath's side of the per-tile benchmark, in a worker as the explorer runs it. Message in:
// { pkg, threads, archs, models, n, warmup, size }; out: { type: "status", text } while
// running, then { type: "result", archs, threaded } or { type: "error", error }.
//   forward  = FeatureModel.extractPreprocessed(input.bin), the network alone;
//   jpeg/png = FeatureModel.extract(tile bytes), decode + preprocess + network.
// threads > 1 needs the threaded module (pkg-threads: initThreadPool), which splits each
// tile's convolutions over that many threads.
import { fetchBytes, time } from "./timing.js";

self.onmessage = async ({ data: q }) => {
  const say = (text) => self.postMessage({ type: "status", text });
  try {
    const m = await import(q.pkg);
    await m.default();
    if (q.threads > 1) {
      if (!m.threaded()) throw new Error(`${q.pkg} was built without threads`);
      await m.initThreadPool(q.threads);
    }
    const input = new Float32Array((await fetchBytes(`${q.models}input.bin`)).buffer);
    const jpeg = await fetchBytes(`${q.models}tile.jpg`);
    const png = await fetchBytes(`${q.models}tile.png`);
    const opts = { n: q.n, warmup: q.warmup, say };
    const out = {};
    for (const arch of q.archs) {
      say(`${arch}: loading`);
      const weights = await fetchBytes(`${q.models}${arch}.safetensors`);
      const t0 = performance.now();
      const model = new m.FeatureModel(weights);
      const loadMs = performance.now() - t0;
      if (model.architecture !== arch || model.inputSize !== q.size) {
        throw new Error(`loaded ${model.architecture} at ${model.inputSize} px, expected ${arch} at ${q.size}`);
      }
      const features = Array.from(model.extractPreprocessed(input));
      out[arch] = {
        loadMs,
        featureDim: model.featureDim,
        forward: await time(`${arch} forward`, () => model.extractPreprocessed(input), opts),
        jpeg: await time(`${arch} extract(jpeg)`, () => model.extract(jpeg), opts),
        png: await time(`${arch} extract(png)`, () => model.extract(png), opts),
        features,
        jpegFeatures: Array.from(model.extract(jpeg)),
      };
      model.free();
    }
    self.postMessage({ type: "result", archs: out, threaded: m.threaded() });
  } catch (e) {
    self.postMessage({ type: "error", error: String(e && e.stack ? e.stack : e) });
  }
};
