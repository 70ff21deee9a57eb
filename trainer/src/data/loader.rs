//! The batch producer: `workers` threads build batches (decode, augment, normalise) ahead of
//! the training step, at most `prefetch` beyond the batches being built, and hand them out in
//! iteration order.
//!
//! Batch `i` is a pure function of `(seed, i, batch, tasks, augment config)`: the sampler's
//! plan and every augmentation draw are keyed by it (see [`super::sampler`]), so the output
//! does not depend on the number of workers, on timing, or on the iteration a run resumed at.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, bail, ensure, Result};

use mtpath_shared::multitask::WholeBatch;

use super::augment::{augment, AugmentConfig};
use super::sampler::{Sampler, SamplerKind};
use super::{ImageCache, TaskItems};

/// One training batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Iteration number.
    pub iter: u64,
    /// `[B, 3, S, S]` row-major, ImageNet-normalised.
    pub images: Vec<f32>,
    /// Task index of each image.
    pub tasks: Vec<usize>,
    /// Class index of each image within its task.
    pub labels: Vec<u32>,
    /// For one rank's share of a data-parallel batch: the whole batch (its size and
    /// samples per task). `None` for a whole batch.
    pub whole: Option<WholeBatch>,
}

/// Which part of every batch a loader builds: the slots of rank `rank` of `world` (see
/// [`crate::dist::share`]), or all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This rank.
    pub rank: usize,
    /// Ranks in all.
    pub world: usize,
}

impl Shard {
    /// The whole batch.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };
}

/// What every worker needs to build any batch.
struct Recipe {
    tasks: Arc<Vec<TaskItems>>,
    cache: Arc<ImageCache>,
    sampler: Sampler,
    aug: AugmentConfig,
    batch: usize,
    seed: u64,
    shard: Shard,
}

impl Recipe {
    fn build(&self, iter: u64) -> Result<Batch> {
        let mut plan = self.sampler.batch_plan(self.seed, iter, self.batch);
        let whole = (self.shard != Shard::WHOLE).then(|| {
            let mut per_task = vec![0; self.tasks.len()];
            plan.iter().for_each(|&(t, _, _)| per_task[t] += 1);
            let mine = crate::dist::share(self.batch, self.shard.world, self.shard.rank);
            plan = plan[mine].to_vec();
            WholeBatch {
                size: self.batch,
                per_task,
            }
        });
        let s = self.aug.size as usize;
        let mut images = Vec::with_capacity(self.batch * 3 * s * s);
        let mut tasks = Vec::with_capacity(self.batch);
        let mut labels = Vec::with_capacity(self.batch);
        for (t, i, seed) in plan {
            let task = &self.tasks[t];
            let item = &task.items[i];
            let img = self
                .cache
                .get(t, i, &item.path)
                .map_err(|e| anyhow!("batch {iter}, task {}: {e}", task.name))?;
            let x = augment(&img, task.crop, &self.aug, seed).map_err(|e| {
                anyhow!(
                    "batch {iter}, task {}: {}: {e:#}",
                    task.name,
                    item.path.display()
                )
            })?;
            images.extend_from_slice(&x);
            tasks.push(t);
            labels.push(item.label);
        }
        Ok(Batch {
            iter,
            images,
            tasks,
            labels,
            whole,
        })
    }
}

/// Which iterations workers may start.
struct Gate {
    /// The next iteration to hand to a worker.
    next_claim: u64,
    /// Workers may only claim iterations below this.
    limit: u64,
    stop: bool,
}

type Shared = (Mutex<Gate>, Condvar);

fn lock(g: &Mutex<Gate>) -> MutexGuard<'_, Gate> {
    g.lock().unwrap_or_else(|e| e.into_inner())
}

/// Multi-threaded, prefetching, deterministic batch producer (an endless iterator).
pub struct Loader {
    recipe: Arc<Recipe>,
    gate: Arc<Shared>,
    rx: Option<Receiver<(u64, Result<Batch>)>>,
    /// Batches received out of order, waiting for their turn.
    ready: BTreeMap<u64, Result<Batch>>,
    next: u64,
    /// Iterations that may be claimed ahead of `next` (built or being built).
    window: u64,
    threads: Vec<JoinHandle<()>>,
}

impl Loader {
    /// Batches `start_iter, start_iter + 1, ...` of `batch` images from `tasks`, built by
    /// `workers` threads (0: built on the calling thread on demand) that keep up to
    /// `prefetch` finished batches ready ahead of the consumer.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tasks: Arc<Vec<TaskItems>>,
        sampler: SamplerKind,
        aug: AugmentConfig,
        batch: usize,
        seed: u64,
        start_iter: u64,
        workers: usize,
        prefetch: usize,
    ) -> Result<Self> {
        let cache = Arc::new(ImageCache::disabled());
        Self::with_cache(
            tasks,
            sampler,
            aug,
            batch,
            seed,
            start_iter,
            workers,
            prefetch,
            cache,
            Shard::WHOLE,
        )
    }

    /// [`Loader::new`] with decoded images taken from (and kept in) `cache`, which must have
    /// been made for the same `tasks`, building only `shard`'s slots of each batch of
    /// `batch`. The batches are the same as without the cache, bit for bit, and the shards'
    /// slots are the whole batch's.
    #[allow(clippy::too_many_arguments)]
    pub fn with_cache(
        tasks: Arc<Vec<TaskItems>>,
        sampler: SamplerKind,
        aug: AugmentConfig,
        batch: usize,
        seed: u64,
        start_iter: u64,
        workers: usize,
        prefetch: usize,
        cache: Arc<ImageCache>,
        shard: Shard,
    ) -> Result<Self> {
        ensure!(batch > 0, "loader: batch size must be > 0");
        ensure!(
            shard.world >= 1 && shard.rank < shard.world && shard.world <= batch,
            "batch of {batch} over {} ranks: every rank needs at least one image; raise --batch",
            shard.world
        );
        aug.validate()?;
        let sampler = Sampler::new(sampler, &tasks)?;
        let recipe = Arc::new(Recipe {
            tasks,
            cache,
            sampler,
            aug,
            batch,
            seed,
            shard,
        });
        let window = (prefetch + workers) as u64;
        let gate: Arc<Shared> = Arc::new((
            Mutex::new(Gate {
                next_claim: start_iter,
                limit: start_iter + window,
                stop: false,
            }),
            Condvar::new(),
        ));
        let (tx, rx) = channel();
        let mut loader = Self {
            recipe,
            gate,
            rx: Some(rx),
            ready: BTreeMap::new(),
            next: start_iter,
            window,
            threads: Vec::with_capacity(workers),
        };
        for w in 0..workers {
            let (recipe, gate, tx) = (loader.recipe.clone(), loader.gate.clone(), tx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("mtpath-loader-{w}"))
                .spawn(move || worker(&recipe, &gate, &tx))
                // On failure, dropping `loader` stops and joins the threads already started.
                .map_err(|e| anyhow!("loader: cannot start worker thread: {e}"))?;
            loader.threads.push(handle);
        }
        Ok(loader)
    }

    /// The next batch in iteration order. A failure (e.g. an undecodable image, named in the
    /// message) is returned for its iteration; the loader then moves on to the next one.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let iter = self.next;
        let Some(rx) = &self.rx else {
            unreachable!("receiver only taken in drop")
        };
        if self.threads.is_empty() {
            self.next += 1;
            return self.recipe.build(iter);
        }
        let result = loop {
            if let Some(r) = self.ready.remove(&iter) {
                break r;
            }
            match rx.recv() {
                Ok((i, r)) => {
                    self.ready.insert(i, r);
                }
                Err(_) => bail!("data loader: all worker threads exited"),
            }
        };
        self.next += 1;
        let (m, cv) = &*self.gate;
        lock(m).limit = self.next + self.window;
        cv.notify_all();
        result
    }

    /// Images per second of the pipeline alone: `warmup` batches untimed, then `batches`
    /// timed, consumed as fast as they come.
    pub fn pipeline_rate(&mut self, warmup: usize, batches: usize) -> Result<f64> {
        for _ in 0..warmup {
            self.next_batch()?;
        }
        let start = Instant::now();
        let mut images = 0usize;
        for _ in 0..batches {
            images += self.next_batch()?.labels.len();
        }
        Ok(images as f64 / start.elapsed().as_secs_f64().max(1e-9))
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_batch())
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        let (m, cv) = &*self.gate;
        lock(m).stop = true;
        cv.notify_all();
        // Workers blocked on a send see the channel closed.
        self.rx = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn worker(recipe: &Recipe, gate: &Shared, tx: &Sender<(u64, Result<Batch>)>) {
    let (m, cv) = gate;
    loop {
        let iter = {
            let mut g = lock(m);
            while !g.stop && g.next_claim >= g.limit {
                g = cv.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            if g.stop {
                return;
            }
            g.next_claim += 1;
            g.next_claim - 1
        };
        let result = catch_unwind(AssertUnwindSafe(|| recipe.build(iter))).unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(anyhow!("batch {iter}: data worker panicked: {msg}"))
        });
        if tx.send((iter, result)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{CropPolicy, Item};
    use image::RgbImage;
    use mtpath_shared::preprocess::load_image;
    use mtpath_shared::testdata::data_dir;
    use std::path::Path;

    /// Three small tasks of synthetic PNGs of different sizes in `dir`.
    fn synthetic_tasks(dir: &Path) -> Arc<Vec<TaskItems>> {
        let specs = [
            ("big", 90u32, 70u32, 5usize, CropPolicy::RandomCrop),
            ("small", 20, 24, 3, CropPolicy::RandomCrop),
            ("rrc", 60, 60, 4, CropPolicy::RandomResizedCrop),
        ];
        let mut tasks = Vec::new();
        for (t, (name, w, h, n, crop)) in specs.into_iter().enumerate() {
            let items = (0..n)
                .map(|i| {
                    let img = RgbImage::from_fn(w, h, |x, y| {
                        image::Rgb([(x * 3 + i as u32) as u8, (y * 5) as u8, (t * 80) as u8])
                    });
                    let path = dir.join(format!("{name}_{i}.png"));
                    img.save(&path).unwrap();
                    Item {
                        path,
                        label: (i % 2) as u32,
                    }
                })
                .collect();
            tasks.push(TaskItems {
                name: name.into(),
                items,
                crop,
                weight: 1.0,
            });
        }
        Arc::new(tasks)
    }

    fn aug() -> AugmentConfig {
        AugmentConfig {
            size: 32,
            rot90: true,
            jitter: 0.2,
            ..AugmentConfig::default()
        }
    }

    fn take(
        tasks: &Arc<Vec<TaskItems>>,
        kind: SamplerKind,
        start: u64,
        workers: usize,
        n: usize,
    ) -> Vec<Batch> {
        let mut l = Loader::new(tasks.clone(), kind, aug(), 4, 99, start, workers, 2).unwrap();
        (0..n).map(|_| l.next_batch().unwrap()).collect()
    }

    #[test]
    fn cached_batches_equal_uncached_bit_for_bit() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = synthetic_tasks(dir.path());
        let plain = take(&tasks, SamplerKind::UniformTask, 0, 2, 12);
        // A budget holding only some of the images: cached and decoded images mix.
        let one = 40 * 40 * 3;
        for budget in [usize::MAX, 5 * one] {
            let cache = Arc::new(ImageCache::new(&tasks, budget));
            let mut l = Loader::with_cache(
                tasks.clone(),
                SamplerKind::UniformTask,
                aug(),
                4,
                99,
                0,
                2,
                2,
                cache.clone(),
                Shard::WHOLE,
            )
            .unwrap();
            for want in &plain {
                let got = l.next_batch().unwrap();
                assert_eq!(got.images, want.images);
                assert_eq!((&got.tasks, &got.labels), (&want.tasks, &want.labels));
            }
            assert!(cache.len() > 0 && cache.used_bytes() <= budget);
        }
    }

    /// Three ranks' shares of batches of 4 (2, 1 and 1 images) are the whole batches' slots
    /// in order, and carry the whole batch's per-task counts.
    #[test]
    fn shards_split_the_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = synthetic_tasks(dir.path());
        let whole = take(&tasks, SamplerKind::UniformTask, 3, 1, 5);
        let shards: Vec<Vec<Batch>> = (0..3)
            .map(|rank| {
                let cache = Arc::new(ImageCache::disabled());
                let shard = Shard { rank, world: 3 };
                let mut l = Loader::with_cache(
                    tasks.clone(),
                    SamplerKind::UniformTask,
                    aug(),
                    4,
                    99,
                    3,
                    1,
                    1,
                    cache,
                    shard,
                )
                .unwrap();
                (0..5).map(|_| l.next_batch().unwrap()).collect()
            })
            .collect();
        for (i, want) in whole.iter().enumerate() {
            let parts: Vec<&Batch> = shards.iter().map(|s| &s[i]).collect();
            assert_eq!(
                parts.iter().map(|b| b.labels.len()).collect::<Vec<_>>(),
                [2, 1, 1]
            );
            let images: Vec<f32> = parts.iter().flat_map(|b| b.images.clone()).collect();
            let task_ids: Vec<usize> = parts.iter().flat_map(|b| b.tasks.clone()).collect();
            assert_eq!(images, want.images);
            assert_eq!(task_ids, want.tasks);
            let mut per_task = vec![0; tasks.len()];
            want.tasks.iter().for_each(|&t| per_task[t] += 1);
            for b in parts {
                let w = b.whole.as_ref().unwrap();
                assert_eq!((w.size, &w.per_task), (4, &per_task));
            }
            assert!(want.whole.is_none());
        }
        let e = Loader::with_cache(
            tasks,
            SamplerKind::UniformTask,
            aug(),
            2,
            99,
            0,
            0,
            1,
            Arc::new(ImageCache::disabled()),
            Shard { rank: 0, world: 3 },
        )
        .err()
        .unwrap();
        assert!(format!("{e}").contains("raise --batch"), "{e}");
    }

    #[test]
    fn batches_have_the_planned_images_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = synthetic_tasks(dir.path());
        let b = take(&tasks, SamplerKind::UniformTask, 0, 2, 3);
        let sampler = Sampler::new(SamplerKind::UniformTask, &tasks).unwrap();
        for (k, batch) in b.iter().enumerate() {
            assert_eq!(batch.iter, k as u64);
            assert_eq!(batch.images.len(), 4 * 3 * 32 * 32);
            let plan = sampler.batch_plan(99, k as u64, 4);
            let expected_tasks: Vec<usize> = plan.iter().map(|p| p.0).collect();
            assert_eq!(batch.tasks, expected_tasks);
            let expected_labels: Vec<u32> =
                plan.iter().map(|p| tasks[p.0].items[p.1].label).collect();
            assert_eq!(batch.labels, expected_labels);
            // Slot 0 is the augmented planned image.
            let (t, i, seed) = plan[0];
            let img = load_image(&tasks[t].items[i].path).unwrap();
            let x = augment(&img, tasks[t].crop, &aug(), seed).unwrap();
            assert_eq!(&batch.images[..x.len()], &x[..]);
        }
    }

    #[test]
    fn output_independent_of_workers_and_resume_point() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = synthetic_tasks(dir.path());
        for kind in [SamplerKind::UniformTask, SamplerKind::RoundRobin] {
            let reference = take(&tasks, kind, 0, 1, 8);
            assert_eq!(take(&tasks, kind, 0, 3, 8), reference, "{kind}: 3 workers");
            assert_eq!(take(&tasks, kind, 0, 0, 8), reference, "{kind}: inline");
            // Started at iteration 5 = started at 0 and advanced to 5.
            assert_eq!(
                take(&tasks, kind, 5, 3, 3),
                reference[5..],
                "{kind}: resumed"
            );
            assert_eq!(
                take(&tasks, kind, 5, 1, 3),
                reference[5..],
                "{kind}: resumed"
            );
        }
    }

    #[test]
    fn corrupt_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("corrupt.jpg");
        std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not really a jpeg at all").unwrap();
        let tasks = Arc::new(vec![TaskItems {
            name: "broken".into(),
            items: vec![Item {
                path: bad.clone(),
                label: 0,
            }],
            crop: CropPolicy::RandomCrop,
            weight: 1.0,
        }]);
        for workers in [0, 2] {
            let mut l = Loader::new(
                tasks.clone(),
                SamplerKind::UniformTask,
                aug(),
                2,
                0,
                0,
                workers,
                2,
            )
            .unwrap();
            let err = l.next_batch().unwrap_err().to_string();
            assert!(err.contains(&bad.display().to_string()), "{err}");
            assert!(err.contains("broken"), "{err}");
            // The loader moves on (and fails again on the same file), no hang, no panic.
            assert!(l.next_batch().is_err());
        }
        // A missing file too.
        let missing = dir.path().join("missing.png");
        let tasks = Arc::new(vec![TaskItems {
            name: "gone".into(),
            items: vec![Item {
                path: missing.clone(),
                label: 0,
            }],
            crop: CropPolicy::Resize,
            weight: 1.0,
        }]);
        let mut l = Loader::new(tasks, SamplerKind::UniformTask, aug(), 1, 0, 0, 1, 1).unwrap();
        let err = l.next_batch().unwrap_err().to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn drop_stops_workers_promptly() {
        let dir = tempfile::tempdir().unwrap();
        let tasks = synthetic_tasks(dir.path());
        // Dropped before any batch, and after some, with full prefetch queues.
        for consumed in [0, 3] {
            let mut l = Loader::new(
                tasks.clone(),
                SamplerKind::UniformTask,
                aug(),
                4,
                1,
                0,
                3,
                4,
            )
            .unwrap();
            for _ in 0..consumed {
                l.next_batch().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            let t = Instant::now();
            drop(l);
            assert!(t.elapsed().as_secs_f64() < 5.0);
        }
    }

    #[test]
    fn real_tasks_pipeline() {
        let root = data_dir();
        if !root.join("lymphoma/manifest.csv").exists() {
            eprintln!("skipped: no real data at {}", root.display());
            return;
        }
        let dirs: Vec<_> = ["lymphoma", "pbc-blood", "idc-breast", "nct-crc-samples"]
            .iter()
            .map(|n| root.join(n))
            .collect();
        let opts = crate::pool::LoadOptions {
            skip_bad: false,
            check: crate::pool::ImageCheck::None,
        };
        let pool =
            crate::pool::Pool::load(&crate::pool::PoolConfig::from_task_dirs(&dirs, 0), &opts)
                .unwrap();
        let mut tasks = pool.train_items().unwrap();
        for t in &mut tasks {
            t.items.truncate(40);
        }
        let tasks = Arc::new(tasks);
        let cfg = AugmentConfig {
            size: 112,
            ..AugmentConfig::default()
        };
        let mut a =
            Loader::new(tasks.clone(), SamplerKind::RoundRobin, cfg, 8, 5, 0, 2, 2).unwrap();
        let batches: Vec<Batch> = (0..3).map(|_| a.next_batch().unwrap()).collect();
        for b in &batches {
            assert_eq!(b.images.len(), 8 * 3 * 112 * 112);
            assert!(b.images.iter().all(|v| v.is_finite()));
        }
        // Round robin over 4 tasks: each batch of 8 has 2 images of each.
        assert_eq!(batches[0].tasks, [0, 1, 2, 3, 0, 1, 2, 3]);
        let mut b = Loader::new(tasks, SamplerKind::RoundRobin, cfg, 8, 5, 2, 1, 1).unwrap();
        assert_eq!(b.next_batch().unwrap(), batches[2]);
        let rate = a.pipeline_rate(0, 2).unwrap();
        assert!(rate > 0.0);
    }
}
