// Analysis worker: PCA, t-SNE, nearest neighbours, the linear probe and the features file, off
// the page's thread. It holds the page's one feature matrix.
//
// On a cross-origin isolated page it loads the threaded module (bindings.js) with a pool of
// one thread per core, up to the probe's usual five folds, so that the probe's
// cross-validation fits its folds in parallel (every fold's result is the same whichever
// thread fits it); otherwise, or when that module fails to start, the single-threaded one.
import { loadBindings } from "./bindings.js";

const MAX_THREADS = 5;
const ready = loadBindings(Math.min(navigator.hardwareConcurrency || 1, MAX_THREADS), "analysing");
let data = null; // { x: Float32Array, n, d }
let neighbours = null;
let tsneToken = 0;
let probe = null;

const reply = (id, body, transfer = []) => self.postMessage({ id, ...body }, transfer);

self.onmessage = async (event) => {
  const msg = event.data;
  const { m, threads } = await ready;
  const { pca2d, TsneRun, Neighbours, probeCrossValidate, Probe, featuresSafetensors, slideHeatmap } = m;
  try {
    switch (msg.type) {
      case "data":
        data = { x: msg.x, n: msg.n, d: msg.d };
        if (neighbours) neighbours.free();
        neighbours = null;
        tsneToken++;
        reply(msg.id, { ok: true });
        break;
      case "pca": {
        const out = pca2d(data.x, data.n, data.d);
        const xy = out.slice(0, 2 * data.n);
        reply(msg.id, { xy, variance: [out[2 * data.n], out[2 * data.n + 1]] }, [xy.buffer]);
        break;
      }
      case "tsne": {
        const token = ++tsneToken;
        const t0 = performance.now();
        const run = new TsneRun(data.x, data.n, data.d, msg.perplexity, 0, BigInt(msg.seed || 0));
        while (!run.isDone) {
          if (token !== tsneToken) { run.free(); return; }
          const xy = run.step(25);
          self.postMessage({
            id: msg.id, partial: true, xy, iteration: run.iteration, total: run.totalIterations,
            ms: performance.now() - t0,
          }, [xy.buffer]);
          // Let a "cancel" (a newer request) arrive between batches of iterations.
          await new Promise((r) => setTimeout(r, 0));
        }
        const xy = run.step(0);
        reply(msg.id, { xy, iteration: run.iteration, total: run.totalIterations, ms: performance.now() - t0 }, [xy.buffer]);
        run.free();
        break;
      }
      case "cancel-tsne":
        tsneToken++;
        reply(msg.id, { ok: true });
        break;
      case "neighbours": {
        if (!neighbours) neighbours = new Neighbours(data.x, data.n, data.d);
        const out = neighbours.query(msg.index, msg.k);
        reply(msg.id, { out });
        break;
      }
      case "probe": {
        // msg.rows: indices of labelled rows; msg.labels, msg.groups aligned with rows.
        const d = data.d;
        const xl = new Float32Array(msg.rows.length * d);
        msg.rows.forEach((r, i) => xl.set(data.x.subarray(r * d, (r + 1) * d), i * d));
        const t0 = performance.now();
        const cv = JSON.parse(probeCrossValidate(
          xl, msg.rows.length, d, Uint32Array.from(msg.labels), msg.classes.length, msg.groups,
          Float64Array.from(msg.cGrid), msg.folds, BigInt(msg.seed || 0), msg.kind));
        const cvMs = performance.now() - t0;
        if (probe) probe.free();
        const t1 = performance.now();
        probe = new Probe(xl, msg.rows.length, d, Uint32Array.from(msg.labels), msg.classes, cv.best_c, msg.kind);
        const fitMs = performance.now() - t1;
        // Scores for every row (labelled ones too: the page shows both).
        const scores = probe.scores(data.x, data.n);
        const pred = probe.predict(data.x, data.n);
        const json = probe.toJson(msg.card, msg.sha256 || undefined, cv.folds, cv.balanced_accuracy, cv.accuracy, msg.rows.length);
        reply(msg.id, { cv, scores, pred, json, cvMs, fitMs, threads });
        break;
      }
      case "heatmap": {
        // Per-tile values over a slide's thumbnail (shared::slide::render_heatmap).
        const pixels = slideHeatmap(msg.thumbnail, msg.width, msg.height, msg.scale, msg.footprint,
          Float64Array.from(msg.xy), Float32Array.from(msg.values), Uint32Array.from(msg.classes));
        reply(msg.id, { pixels }, [pixels.buffer]);
        break;
      }
      case "features-safetensors": {
        // The layout `mtpath features` writes (shared::features_file), with the page's metadata.
        const bytes = featuresSafetensors(data.x, data.n, data.d, msg.names, msg.meta);
        reply(msg.id, { bytes }, [bytes.buffer]);
        break;
      }
      default:
        throw new Error(`unknown request ${msg.type}`);
    }
  } catch (err) {
    reply(msg.id, { error: String(err.message || err) });
  }
};
