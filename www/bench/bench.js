// Browser benchmark page (see index.html and scripts/bench-web.sh): times one engine per page
// load, writes the results as JSON into <pre id="result"> and sets window.benchDone = true.
//
// Per tile (batch 1):
// engine=mtpath: our bindings (module URL `pkg`) in a worker (mtpath-worker.js), `threads`
//   threads (> 1: the threaded module, pkg-threads):
//   forward  = FeatureModel.extractPreprocessed(input.bin), the network alone;
//   jpeg/png = FeatureModel.extract(tile bytes), decode + preprocess + network.
// engine=ort: onnxruntime-web, wasm execution provider, `threads` threads:
//   forward  = InferenceSession.run on the same input.bin.
// The features of the forward run are returned so the driver can compare engines.
//
// Per folder (engine=folder-mtpath / folder-ort): every tile listed in `tiles` (a JSON list of
// URLs, real tiles of different sizes), `rounds` passes after one warm-up pass, tiles/s:
// folder-mtpath: the explorer's own extraction pool (www/app/extract.js: `workers` workers,
//   each on floor(cores / workers) threads), file bytes to features (decode, resize,
//   network, thumbnail), as a drop in the explorer;
// folder-ort: onnxruntime-web with `threads` threads, one tile after another, each decoded,
//   resized and cropped by the browser (createImageBitmap, canvas) and normalised in JavaScript.

import { fetchBytes, summary, time, yieldToEventLoop } from "./timing.js";

const params = new URLSearchParams(location.search);
const engine = params.get("engine") ?? "mtpath";
const pkg = params.get("pkg") ?? "/www/pkg/mtpath_web.js";
const threads = Number(params.get("threads") ?? 1);
const workers = Number(params.get("workers") ?? 1);
const archs = (params.get("archs") ?? "resnet18,resnet50").split(",");
const n = Number(params.get("n") ?? 20);
const warmup = Number(params.get("warmup") ?? 3);
const rounds = Number(params.get("rounds") ?? 2);
const models = params.get("models") ?? "/models/";
const tilesUrl = params.get("tiles") ?? "/models/tiles.json";
const size = 224;
const MEAN = [0.485, 0.456, 0.406];
const STD = [0.229, 0.224, 0.225];

const status = document.getElementById("status");
const say = (s) => { status.textContent = s; };

function benchMtpath() {
  const worker = new Worker(new URL("./mtpath-worker.js", import.meta.url), { type: "module" });
  return new Promise((resolve, reject) => {
    worker.onerror = (e) => reject(new Error(e.message || "the benchmark worker failed"));
    worker.onmessage = ({ data }) => {
      if (data.type === "status") say(data.text);
      else if (data.type === "result") { worker.terminate(); resolve(data.archs); }
      else if (data.type === "error") { worker.terminate(); reject(new Error(data.error)); }
    };
    worker.postMessage({ pkg, threads, archs, models, n, warmup, size });
  });
}

async function ortModule() {
  const ort = await import("/ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = "/ort/";
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.simd = true;
  ort.env.wasm.proxy = false;
  return ort;
}

async function ortSession(ort, arch) {
  const bytes = await fetchBytes(`${models}${arch}.onnx`);
  return ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], graphOptimizationLevel: "all" });
}

/** Time `pass` (one pass over the folder) `rounds` times after one warm-up pass: tiles/s. */
async function timeFolder(label, count, pass) {
  say(`${label}: warm-up pass`);
  await pass();
  const seconds = [];
  for (let r = 0; r < rounds; r++) {
    say(`${label}: pass ${r + 1}/${rounds}`);
    await yieldToEventLoop();
    const t0 = performance.now();
    await pass();
    seconds.push((performance.now() - t0) / 1000);
  }
  const s = summary(seconds);
  return { tiles: count, seconds, tilesPerSecond: count / s.median, bestTilesPerSecond: count / s.min };
}

async function benchFolderMtpath(tiles) {
  const extract = await import("/www/app/extract.js");
  const out = {};
  for (const arch of archs) {
    say(`${arch}: loading`);
    const weights = await fetchBytes(`${models}${arch}.safetensors`);
    await extract.loadModel(weights.buffer, workers);
    const threadsEach = extract.workerThreads();
    const pass = async () => {
      const { results } = await extract.extract(tiles, { count: workers, thumb: 64, transform: "resize", onProgress: () => {} });
      const failed = results.filter((r) => !r || r.error);
      if (failed.length) throw new Error(`${failed.length} tiles failed: ${failed[0]?.error}`);
    };
    out[arch] = { workers: extract.workerCount(), threads: threadsEach, ...(await timeFolder(arch, tiles.length, pass)) };
  }
  return out;
}

/** `blob` decoded by the browser, its shorter side resized to 256 and the centre size × size
 * cut out (torchvision's eval transform, as the explorer's "resize"), normalised, CHW float32. */
async function ortInput(blob) {
  const decoded = await createImageBitmap(blob);
  const scale = 256 / Math.min(decoded.width, decoded.height);
  const w = Math.round(decoded.width * scale);
  const h = Math.round(decoded.height * scale);
  const bitmap = await createImageBitmap(decoded, { resizeWidth: w, resizeHeight: h, resizeQuality: "high" });
  decoded.close();
  const canvas = new OffscreenCanvas(size, size);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, Math.floor((w - size) / 2), Math.floor((h - size) / 2), size, size, 0, 0, size, size);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, size, size).data;
  const plane = size * size;
  const x = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) x[c * plane + i] = (rgba[4 * i + c] / 255 - MEAN[c]) / STD[c];
  }
  return x;
}

async function benchFolderOrt(tiles, result) {
  const ort = await ortModule();
  result.ortVersion = ort.env.versions?.web ?? null;
  const out = {};
  for (const arch of archs) {
    say(`${arch}: loading`);
    const session = await ortSession(ort, arch);
    const pass = async () => {
      for (const blob of tiles) {
        const x = new ort.Tensor("float32", await ortInput(blob), [1, 3, size, size]);
        await session.run({ [session.inputNames[0]]: x });
      }
    };
    out[arch] = { workers: 1, threads, ...(await timeFolder(arch, tiles.length, pass)) };
    await session.release();
  }
  return out;
}

async function folderTiles() {
  const urls = JSON.parse(new TextDecoder().decode(await fetchBytes(tilesUrl)));
  if (!Array.isArray(urls) || !urls.length) throw new Error(`${tilesUrl}: no tiles listed`);
  say(`fetching ${urls.length} tiles`);
  return Promise.all(urls.map(async (u) => new File([await fetchBytes(u)], u.split("/").pop())));
}

async function benchOrt(input, result) {
  const ort = await ortModule();
  result.ortVersion = ort.env.versions?.web ?? null;
  const out = {};
  for (const arch of archs) {
    say(`${arch}: loading`);
    const t0 = performance.now();
    const session = await ortSession(ort, arch);
    const loadMs = performance.now() - t0;
    const run = async () => {
      const x = new ort.Tensor("float32", input, [1, 3, size, size]);
      const y = await session.run({ [session.inputNames[0]]: x });
      return y[session.outputNames[0]].data;
    };
    const features = Array.from(await run());
    out[arch] = { loadMs, featureDim: features.length, forward: await time(`${arch} forward`, run, { n, warmup, say }), features };
    await session.release();
  }
  return out;
}

async function main() {
  const result = {
    engine, pkg: engine.endsWith("mtpath") ? pkg : null, threads, workers, n, warmup, rounds,
    crossOriginIsolated: self.crossOriginIsolated === true,
    hardwareConcurrency: navigator.hardwareConcurrency,
    userAgent: navigator.userAgent,
  };
  try {
    if (engine === "mtpath") {
      result.archs = await benchMtpath();
    } else if (engine === "ort") {
      const input = new Float32Array((await fetchBytes(`${models}input.bin`)).buffer);
      if (input.length !== 3 * size * size) throw new Error(`input.bin: ${input.length} floats`);
      result.archs = await benchOrt(input, result);
    } else if (engine === "folder-mtpath") {
      result.archs = await benchFolderMtpath(await folderTiles());
    } else if (engine === "folder-ort") {
      result.archs = await benchFolderOrt(await folderTiles(), result);
    } else {
      throw new Error(`unknown engine ${engine}`);
    }
  } catch (e) {
    result.error = String(e && e.stack ? e.stack : e);
  }
  result.wasm = performance.getEntriesByType("resource")
    .filter((e) => e.name.endsWith(".wasm"))
    .map((e) => ({ url: new URL(e.name).pathname, bytes: e.encodedBodySize }));
  document.getElementById("result").textContent = JSON.stringify(result);
  say(result.error ? "failed" : "done");
  window.benchDone = true;
}

main();
