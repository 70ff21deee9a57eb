// The wasm bindings a worker runs on, shared by the extraction and analysis workers: asked for
// more than one thread on a cross-origin isolated page (SharedArrayBuffer), the threaded
// module (pkg-threads, a rayon pool of that many threads on Web Workers of its own); anything
// else, or a threaded module that fails to start, the single-threaded one (pkg).

// Seconds the threaded module's pool may take to start before the worker gives up on it.
const THREAD_START_LIMIT_S = 30;

/** `{ m, threads }`: the initialised bindings module and the threads it runs on. `task` names
 * the work in the warning when the threaded module is unavailable. */
export async function loadBindings(threads, task) {
  if (threads > 1 && self.crossOriginIsolated) {
    try {
      const m = await import("./pkg-threads/mtpath_web.js");
      await m.default();
      let timer;
      const late = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`its ${threads} threads did not start in ${THREAD_START_LIMIT_S} s`)), THREAD_START_LIMIT_S * 1000);
      });
      await Promise.race([m.initThreadPool(threads), late]).finally(() => clearTimeout(timer));
      return { m, threads };
    } catch (err) {
      console.warn(`mtpath: threaded module unavailable (${err.message || err}); ${task} on one thread`);
    }
  }
  const m = await import("./pkg/mtpath_web.js");
  await m.default();
  return { m, threads: 1 };
}
