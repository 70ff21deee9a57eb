//! Decoded training images kept in RAM (8-bit RGB, as decoded) under a byte budget, so that
//! after the first pass over a pool an image costs its augmentation only, not its file read and
//! decode. A cached image is the decoder's output itself, so batches are bit for bit the same
//! with or without the cache; the cache only decides where the pixels come from.
//!
//! Images are kept first come, first kept: once the budget is spent, later images are decoded
//! on every use (no eviction, so there is no churn and no lock on the hot path).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use image::RgbImage;
use mtpath_shared::preprocess::load_image;

use super::TaskItems;

/// A decoded-image cache over the items of a task list (one slot per item).
pub struct ImageCache {
    budget: usize,
    used: AtomicUsize,
    slots: Vec<Vec<OnceLock<Arc<RgbImage>>>>,
}

impl ImageCache {
    /// A cache for `tasks` holding at most `budget_bytes` of pixels (0 = off).
    pub fn new(tasks: &[TaskItems], budget_bytes: usize) -> Self {
        let slots = if budget_bytes == 0 {
            Vec::new()
        } else {
            tasks
                .iter()
                .map(|t| (0..t.items.len()).map(|_| OnceLock::new()).collect())
                .collect()
        };
        Self {
            budget: budget_bytes,
            used: AtomicUsize::new(0),
            slots,
        }
    }

    /// No cache: every image is decoded on every use.
    pub fn disabled() -> Self {
        Self::new(&[], 0)
    }

    /// Pixels held, in bytes.
    pub fn used_bytes(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Images held.
    pub fn len(&self) -> usize {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.get().is_some())
            .count()
    }

    /// The decoded image of item `item` of task `task` (at `path`): from the cache, or
    /// decoded and, while the budget allows, kept.
    pub fn get(
        &self,
        task: usize,
        item: usize,
        path: &Path,
    ) -> mtpath_shared::Result<Arc<RgbImage>> {
        let Some(slot) = self.slots.get(task).and_then(|t| t.get(item)) else {
            return Ok(Arc::new(load_image(path)?));
        };
        if let Some(img) = slot.get() {
            return Ok(img.clone());
        }
        let img = Arc::new(load_image(path)?);
        let bytes = img.as_raw().len();
        // Reserve before storing, so concurrent workers never exceed the budget together.
        let reserved = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                (u + bytes <= self.budget).then_some(u + bytes)
            })
            .is_ok();
        if reserved && slot.set(img.clone()).is_err() {
            // Another worker stored the same image first: give the reservation back.
            self.used.fetch_sub(bytes, Ordering::Relaxed);
        }
        Ok(img)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{CropPolicy, Item};

    fn task_of(dir: &Path, n: usize, side: u32) -> TaskItems {
        let items = (0..n)
            .map(|i| {
                let p = dir.join(format!("{i}.png"));
                RgbImage::from_fn(side, side, |x, y| image::Rgb([i as u8, x as u8, y as u8]))
                    .save(&p)
                    .unwrap();
                Item { path: p, label: 0 }
            })
            .collect();
        TaskItems {
            name: "t".into(),
            items,
            crop: CropPolicy::RandomCrop,
            weight: 1.0,
        }
    }

    #[test]
    fn keeps_images_within_the_budget_and_serves_them_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let task = task_of(dir.path(), 5, 16);
        let one = 16 * 16 * 3;
        let cache = ImageCache::new(std::slice::from_ref(&task), 3 * one);
        for (i, item) in task.items.iter().enumerate() {
            let img = cache.get(0, i, &item.path).unwrap();
            assert_eq!(*img, load_image(&item.path).unwrap());
        }
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.used_bytes(), 3 * one);
        // Cached images are served from memory, even once the file is gone.
        std::fs::remove_file(&task.items[0].path).unwrap();
        assert!(cache.get(0, 0, &task.items[0].path).is_ok());
        // Images past the budget are decoded each time.
        std::fs::remove_file(&task.items[4].path).unwrap();
        assert!(cache.get(0, 4, &task.items[4].path).is_err());
    }

    #[test]
    fn disabled_cache_holds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let task = task_of(dir.path(), 2, 8);
        let cache = ImageCache::new(std::slice::from_ref(&task), 0);
        cache.get(0, 1, &task.items[1].path).unwrap();
        assert_eq!((cache.len(), cache.used_bytes()), (0, 0));
    }
}
