// The probe benchmark's worker (see probe.html): what the explorer's analysis worker runs for
// "Cross-validate and classify" — probeCrossValidate over the default C grid (grouped 5-fold,
// seed 0, widened when the best C is at an edge), then a Probe fitted on every row at the best
// C — on the rows of a features safetensors file, timed with performance.now().
// Message in: { pkg, threads, file }; out: { type: "status", text } while running, then
// { type: "result", result } or { type: "error", error }.
import { fetchBytes } from "./timing.js";

/** `features` (F32, n × d), `labels` (I64, n) and the `groups` metadata of a features file. */
function readFeatures(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLen)));
  const body = 8 + headerLen;
  const slice = (name) => {
    const t = header[name];
    if (!t) throw new Error(`the features file has no ${name} tensor`);
    const [a, b] = t.data_offsets;
    return { t, bytes: bytes.slice(body + a, body + b) };
  };
  const f = slice("features");
  if (f.t.dtype !== "F32" || f.t.shape.length !== 2) throw new Error("features must be F32 n × d");
  const [n, d] = f.t.shape;
  const l = slice("labels");
  if (l.t.dtype !== "I64") throw new Error("labels must be I64");
  const l64 = new BigInt64Array(l.bytes.buffer);
  const labels = Uint32Array.from(l64, (v) => Number(v));
  const meta = header.__metadata__ ?? {};
  const groups = meta.groups ? JSON.parse(meta.groups) : new Array(n).fill("");
  return { x: new Float32Array(f.bytes.buffer), n, d, labels, groups };
}

self.onmessage = async ({ data: q }) => {
  const say = (text) => self.postMessage({ type: "status", text });
  try {
    const m = await import(q.pkg);
    await m.default();
    if (q.threads > 1) {
      if (!m.threaded()) throw new Error(`${q.pkg} was built without threads`);
      await m.initThreadPool(q.threads);
    }
    say(`reading ${q.file}`);
    const { x, n, d, labels, groups } = readFeatures(await fetchBytes(q.file));
    const k = Math.max(...labels) + 1;
    const classes = Array.from({ length: k }, (_, i) => `class${i}`);
    say(`cross-validating on ${n} tiles × ${d} features, ${k} classes`);
    const t0 = performance.now();
    const cv = JSON.parse(m.probeCrossValidate(x, n, d, labels, k, groups, new Float64Array(0), 5, 0n, "logistic"));
    const t1 = performance.now();
    say(`final fit at C = ${cv.best_c}`);
    const probe = new m.Probe(x, n, d, labels, classes, cv.best_c, "logistic");
    const t2 = performance.now();
    probe.free();
    self.postMessage({ type: "result", result: {
      n, d, classes: k, threads: q.threads, cvMs: t1 - t0, fitMs: t2 - t1, bestC: cv.best_c,
      widened: cv.widened, scores: cv.scores, threaded: m.threaded(),
    } });
  } catch (e) {
    self.postMessage({ type: "error", error: String(e && e.stack ? e.stack : e) });
  }
};
