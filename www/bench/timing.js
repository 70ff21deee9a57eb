// Timing helpers shared by the benchmark page (bench.js) and its mtpath worker.

/** The bytes at `url`, or an error naming it. */
export async function fetchBytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

// Give the event loop a turn (the driver's polls, status updates) outside the timed part:
// mtpath's calls are synchronous and would otherwise hold the thread for minutes.
export const yieldToEventLoop = () => new Promise((resolve) => setTimeout(resolve, 0));

/** Median, mean, min and max of `ms` (and the list itself). */
export function summary(ms) {
  const k = ms.length;
  const sorted = [...ms].sort((a, b) => a - b);
  const median = k % 2 ? sorted[(k - 1) / 2] : (sorted[k / 2 - 1] + sorted[k / 2]) / 2;
  return { median, mean: ms.reduce((a, b) => a + b, 0) / k, min: sorted[0], max: sorted[k - 1], ms };
}

/** Run `fn` `warmup` times, then time `n` calls one by one (ms each); `say` reports progress. */
export async function time(label, fn, { n, warmup, say }) {
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
  return summary(ms);
}
