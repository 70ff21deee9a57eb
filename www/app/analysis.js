// The analysis worker (PCA, t-SNE, neighbours, probe, features file), by request and reply.
// It holds the page's one feature matrix, sent once per extraction with `ask("data", …)`.

const worker = new Worker(new URL("../analysis-worker.js", import.meta.url), { type: "module" });
let nextId = 1;
const pending = new Map();

worker.onmessage = (e) => {
  const msg = e.data;
  const p = pending.get(msg.id);
  if (!p) return;
  if (msg.partial) { p.onPartial?.(msg); return; }
  pending.delete(msg.id);
  if (msg.error) p.reject(new Error(msg.error)); else p.resolve(msg);
};

/** Send request `type` with `body`; resolves with the reply, calling `onPartial` with each
 * partial reply (t-SNE's iterations) before it. */
export function ask(type, body = {}, onPartial = null, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject, onPartial });
    worker.postMessage({ id, type, ...body }, transfer);
  });
}
