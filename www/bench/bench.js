// Browser benchmark page (see index.html and scripts/bench-web.sh): times one engine per page
// load, writes the results as JSON into <pre id="result"> and sets window.benchDone = true.
//
// engine=mtpath: our bindings (module URL `pkg`), single thread:
//   forward  = FeatureModel.extractPreprocessed(input.bin), the network alone;
//   jpeg/png = FeatureModel.extract(tile bytes), decode + preprocess + network.
// engine=ort: onnxruntime-web, wasm execution provider, `threads` threads:
//   forward  = InferenceSession.run on the same input.bin.
// The features of the forward run are returned so the driver can compare engines.

const params = new URLSearchParams(location.search);
const engine = params.get("engine") ?? "mtpath";
const pkg = params.get("pkg") ?? "/www/pkg/mtpath_web.js";
const threads = Number(params.get("threads") ?? 1);
const archs = (params.get("archs") ?? "resnet18,resnet50").split(",");
const n = Number(params.get("n") ?? 20);
const warmup = Number(params.get("warmup") ?? 3);
const models = params.get("models") ?? "/models/";
const size = 224;

const status = document.getElementById("status");
const say = (s) => { status.textContent = s; };

async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

// Give the event loop a turn (the driver's polls, status updates) outside the timed part:
// mtpath's calls are synchronous and would otherwise hold the main thread for minutes.
const yieldToEventLoop = () => new Promise((resolve) => setTimeout(resolve, 0));

// Warm up, then time `n` calls of `fn` one by one (ms each).
async function time(label, fn) {
  for (let i = 0; i < warmup; i++) {
    say(`${label}: warm-up ${i + 1}/${warmup}`);
    await yieldToEventLoop();
    await fn();
  }
  const ms = [];
  for (let i = 0; i < n; i++) {
    say(`${label}: run ${i + 1}/${n}`);
    await yieldToEventLoop();
    const t0 = performance.now();
    await fn();
    ms.push(performance.now() - t0);
  }
  const sorted = [...ms].sort((a, b) => a - b);
  const median = n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
  return { median, mean: ms.reduce((a, b) => a + b, 0) / n, min: sorted[0], max: sorted[n - 1], ms };
}

async function benchMtpath(input, jpeg, png) {
  const m = await import(pkg);
  await m.default();
  const out = {};
  for (const arch of archs) {
    say(`${arch}: loading`);
    const weights = await fetchBytes(`${models}${arch}.safetensors`);
    const t0 = performance.now();
    const model = new m.FeatureModel(weights);
    const loadMs = performance.now() - t0;
    if (model.architecture !== arch || model.inputSize !== size) {
      throw new Error(`loaded ${model.architecture} at ${model.inputSize} px, expected ${arch} at ${size}`);
    }
    const features = Array.from(model.extractPreprocessed(input));
    const r = {
      loadMs,
      featureDim: model.featureDim,
      forward: await time(`${arch} forward`, () => model.extractPreprocessed(input)),
      jpeg: await time(`${arch} extract(jpeg)`, () => model.extract(jpeg)),
      png: await time(`${arch} extract(png)`, () => model.extract(png)),
      features,
      jpegFeatures: Array.from(model.extract(jpeg)),
    };
    model.free();
    out[arch] = r;
  }
  return out;
}

async function benchOrt(input, result) {
  const ort = await import("/ort/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = "/ort/";
  ort.env.wasm.numThreads = threads;
  ort.env.wasm.simd = true;
  ort.env.wasm.proxy = false;
  result.ortVersion = ort.env.versions?.web ?? null;
  const out = {};
  for (const arch of archs) {
    say(`${arch}: loading`);
    const bytes = await fetchBytes(`${models}${arch}.onnx`);
    const t0 = performance.now();
    const session = await ort.InferenceSession.create(bytes, {
      executionProviders: ["wasm"],
      graphOptimizationLevel: "all",
    });
    const loadMs = performance.now() - t0;
    const run = async () => {
      const x = new ort.Tensor("float32", input, [1, 3, size, size]);
      const y = await session.run({ [session.inputNames[0]]: x });
      return y[session.outputNames[0]].data;
    };
    const features = Array.from(await run());
    out[arch] = { loadMs, featureDim: features.length, forward: await time(`${arch} forward`, run), features };
    await session.release();
  }
  return out;
}

async function main() {
  const result = {
    engine, pkg: engine === "mtpath" ? pkg : null, threads: engine === "ort" ? threads : 1, n, warmup,
    crossOriginIsolated: self.crossOriginIsolated === true,
    hardwareConcurrency: navigator.hardwareConcurrency,
    userAgent: navigator.userAgent,
  };
  try {
    const input = new Float32Array((await fetchBytes(`${models}input.bin`)).buffer);
    if (input.length !== 3 * size * size) throw new Error(`input.bin: ${input.length} floats`);
    if (engine === "mtpath") {
      const jpeg = await fetchBytes(`${models}tile.jpg`);
      const png = await fetchBytes(`${models}tile.png`);
      result.archs = await benchMtpath(input, jpeg, png);
    } else if (engine === "ort") {
      result.archs = await benchOrt(input, result);
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
