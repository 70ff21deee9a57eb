// Feature extraction on a pool of workers (extract-worker.js), each with its own wasm instance.
// The pool belongs to the loaded model: every worker parses the model once per load, and later
// drops reuse the workers, so a drop costs only the tiles it holds.
//
// Threads: on a cross-origin isolated page (SharedArrayBuffer; `mtpath serve` sends the
// headers) the cores left over by the workers are shared out among them: each worker runs
// its tiles on floor(cores / workers) threads (the threaded module), so one worker on a
// 4-core machine embeds each tile on 4 threads, and 4 workers each on one. Elsewhere every
// worker is single-threaded.

const MAX_WORKERS = 8;

const pool = {
  bytes: null,        // the model file, kept to start more workers when the count goes up
  workers: [],        // { w, busy, wanted, threads, ready: Promise }: threads asked for, and run on
  job: null,          // the running extraction
  nextJob: 1,
};

/** Threads each of `count` workers runs its tiles on. */
export function threadsPerWorker(count) {
  if (!self.crossOriginIsolated) return 1;
  return Math.max(1, Math.floor((navigator.hardwareConcurrency || 1) / Math.max(1, count)));
}

function startWorker(threads) {
  const w = new Worker(new URL("../extract-worker.js", import.meta.url), { type: "module" });
  const slot = { w, busy: false, wanted: threads, threads: 1, ready: null };
  slot.ready = new Promise((resolve, reject) => {
    w.onerror = (e) => reject(new Error(e.message || "worker failed to start"));
    w.onmessage = (e) => {
      const m = e.data;
      if (m.type === "model-ready") {
        slot.threads = m.threads;
        w.onmessage = (ev) => onReply(slot, ev.data);
        w.onerror = () => onCrash(slot);
        resolve(m);
      }
      else if (m.type === "model-error") reject(new Error(m.error));
    };
  });
  w.postMessage({ type: "model", bytes: pool.bytes.slice(0), threads });
  return slot;
}

function stopWorker(slot) {
  slot.w.terminate();
  pool.workers = pool.workers.filter((s) => s !== slot);
}

/** Parse `bytes` (a model file) in `count` new workers, replacing the old ones. Resolves with
 * `{ card, extensions }` from the model crate; rejects with the reason the model was refused. */
export async function loadModel(bytes, count) {
  if (pool.job) pool.job.cancel();
  for (const s of [...pool.workers]) stopWorker(s);
  pool.bytes = bytes;
  // One worker first: a bad file is refused once, not by every worker.
  const first = startWorker(threadsPerWorker(count));
  pool.workers.push(first);
  let reply;
  try { reply = await first.ready; } catch (err) { stopWorker(first); pool.bytes = null; throw err; }
  await resize(count);
  return { card: reply.card, extensions: reply.extensions };
}

/** Grow or shrink the pool to `count` workers (1 to 8), each on `threadsPerWorker(count)`
 * threads (workers started for another share are replaced); resolves when all are ready. */
async function resize(count) {
  const n = Math.max(1, Math.min(MAX_WORKERS, count));
  const threads = threadsPerWorker(n);
  for (const s of [...pool.workers]) if (s.wanted !== threads) stopWorker(s);
  while (pool.workers.length > n) {
    const idle = pool.workers.find((s) => !s.busy) ?? pool.workers[pool.workers.length - 1];
    stopWorker(idle);
  }
  while (pool.workers.length < n) pool.workers.push(startWorker(threads));
  const ready = await Promise.allSettled(pool.workers.map((s) => s.ready));
  ready.forEach((r, i) => r.status === "rejected" && stopWorker(pool.workers[i]));
  if (!pool.workers.length) throw new Error("no extraction worker could start");
}

function feed(slot) {
  const job = pool.job;
  if (!job || job.cancelled || slot.busy) return;
  if (job.next >= job.files.length) return;
  const id = job.next++;
  slot.busy = true; slot.tile = { job: job.id, id };
  const task = job.files[id];
  if (task instanceof Blob) {
    slot.w.postMessage({ type: "extract", job: job.id, id, file: task, thumb: job.thumb, transform: job.transform });
  } else {
    // A tile of a slide: { slide: { file, cut }, x, y } (level-0 pixels).
    slot.w.postMessage({ type: "slide-tile", job: job.id, id, file: task.slide.file, cut: task.slide.cut, x: task.x, y: task.y, transform: job.transform });
  }
}

function record(job, id, result) {
  job.results[id] = result;
  job.done++;
  job.onProgress(job.done, job.files.length);
  if (job.done === job.files.length) job.finish();
}

function onReply(slot, m) {
  slot.busy = false; slot.tile = null;
  const job = pool.job;
  // A reply to a cancelled extraction (the tile was in flight) is dropped.
  if (job && m.job === job.id) {
    if (m.type === "done") record(job, m.id, m);
    else if (m.type === "failed") record(job, m.id, { error: m.error });
  }
  if (pool.workers.includes(slot)) feed(slot);
}

function onCrash(slot) {
  const tile = slot.tile;
  stopWorker(slot);
  const job = pool.job;
  if (job && tile && tile.job === job.id) record(job, tile.id, { error: "the extraction worker crashed on this file" });
  if (job && !pool.workers.length) job.finish();
}

/** Ask one worker (outside any extraction) a slide question: `message` is `slide-plan` or
 * `slide-zoom`; resolves with its answer. */
async function askSlide(message) {
  if (!pool.workers.length) throw new Error("load a model first");
  const slot = pool.workers.find((s) => !s.busy) ?? pool.workers[0];
  await slot.ready;
  return new Promise((resolve, reject) => {
    const ch = new Worker(new URL("../extract-worker.js", import.meta.url), { type: "module" });
    ch.onmessage = (e) => {
      const m = e.data;
      if (m.type === "slide-planned" || m.type === "slide-zoomed") resolve(m);
      else if (m.type === "slide-failed") reject(new Error(m.error));
      else return;
      ch.terminate();
    };
    ch.onerror = (e) => { reject(new Error(e.message || "the slide worker failed")); ch.terminate(); };
    ch.postMessage(message);
  });
}

/** Open a slide, find its tissue and plan its tiles as `cut` says (`{ size, mpp, level,
 * minTissue, slideMpp, thumbnail }`). Resolves with `{ plan, thumbnail, overview }` (RGBA). */
export function planSlide(file, cut) { return askSlide({ type: "slide-plan", file, cut }); }

/** The tile at level-0 (`x`, `y`) of a planned slide, RGBA `size` × `size`. */
export function slideTile(file, cut, x, y) { return askSlide({ type: "slide-zoom", file, cut, x, y }); }

/**
 * Embed `files` (File objects, or slide tiles `{ slide: { file, cut }, x, y }`) on `count` workers, each turned into input by `transform`
 * (`resize`, `center-crop` or `grid`; see the model crate's EvalTransform). Resolves with `{ results, cancelled }`:
 * `results[i]` is the worker's reply for file i (features, thumbnail, sizes), `{ error }` for a
 * file the decoder refused, or undefined for a file not reached before `cancel()`.
 */
export async function extract(files, { count, thumb, transform = "resize", onProgress }) {
  if (pool.job) pool.job.cancel();
  await resize(count);
  const job = {
    id: pool.nextJob++, files, thumb, transform, onProgress, results: new Array(files.length),
    next: 0, done: 0, cancelled: false,
  };
  const finished = new Promise((resolve) => {
    job.finish = () => { if (pool.job === job) pool.job = null; resolve(); };
    job.cancel = () => { job.cancelled = true; job.finish(); };
  });
  pool.job = job;
  if (!files.length) job.finish();
  for (const s of pool.workers) feed(s);
  await finished;
  return { results: job.results, cancelled: job.cancelled };
}

/** Stop the running extraction, if any (tiles in flight finish and are dropped). */
export function cancel() { pool.job?.cancel(); }

/** The number of workers in the pool. */
export function workerCount() { return pool.workers.length; }

/** Threads per worker in the pool (the largest, should they differ). */
export function workerThreads() { return Math.max(1, ...pool.workers.map((s) => s.threads ?? 1)); }
