//! The summary `mtpath pool check` prints: one row per task, class counts per split, warnings
//! about classes missing from a split, and every skipped image.

use std::fmt::Write;

use super::{Pool, Split, Task};

/// What the table shows for one task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSummary {
    pub name: String,
    pub images: usize,
    /// (class, train, val, test)
    pub classes: Vec<(String, usize, usize, usize)>,
    pub groups: usize,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub image_sizes: Option<((u32, u32), (u32, u32))>,
    /// Images of this task that were skipped.
    pub unreadable: usize,
}

pub fn summarize(pool: &Pool, task: &Task) -> TaskSummary {
    let mut classes: Vec<(String, usize, usize, usize)> =
        task.classes.iter().map(|c| (c.clone(), 0, 0, 0)).collect();
    let mut groups = std::collections::BTreeSet::new();
    for (s, x) in task.samples() {
        let c = &mut classes[x.label as usize];
        match s {
            Split::Train => c.1 += 1,
            Split::Val => c.2 += 1,
            Split::Test => c.3 += 1,
        }
        groups.insert(x.group.as_str());
    }
    TaskSummary {
        name: task.name.clone(),
        images: task.len(),
        classes,
        groups: groups.len(),
        train: task.train.len(),
        val: task.val.len(),
        test: task.test.len(),
        image_sizes: task.image_sizes,
        unreadable: pool
            .skipped
            .iter()
            .filter(|s| s.path.starts_with(&task.root))
            .count(),
    }
}

/// Classes with no train, val or test samples.
pub fn warnings(summary: &TaskSummary) -> Vec<String> {
    let mut out = Vec::new();
    for (c, tr, va, te) in &summary.classes {
        let missing: Vec<&str> = [("train", tr), ("val", va), ("test", te)]
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(s, _)| *s)
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "{}: class `{c}` has no {} samples (too few groups)",
                summary.name,
                missing.join("/")
            ));
        }
    }
    out
}

fn size_range(s: Option<((u32, u32), (u32, u32))>) -> String {
    match s {
        None => "-".into(),
        Some(((a, b), (c, d))) if (a, b) == (c, d) => format!("{a}x{b}"),
        Some(((a, b), (c, d))) => format!("{a}x{b}..{c}x{d}"),
    }
}

/// The whole report: table, classes, warnings, skipped images.
pub fn render(pool: &Pool) -> String {
    let summaries: Vec<TaskSummary> = pool.tasks.iter().map(|t| summarize(pool, t)).collect();
    let w = summaries
        .iter()
        .map(|s| s.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<w$}  {:>6}  {:>7}  {:>6}  {:>6}  {:>5}  {:>5}  {:<17}  {:>10}",
        "task", "images", "classes", "groups", "train", "val", "test", "image size", "unreadable"
    );
    for s in &summaries {
        let _ = writeln!(
            o,
            "{:<w$}  {:>6}  {:>7}  {:>6}  {:>6}  {:>5}  {:>5}  {:<17}  {:>10}",
            s.name,
            s.images,
            s.classes.len(),
            s.groups,
            s.train,
            s.val,
            s.test,
            size_range(s.image_sizes),
            s.unreadable
        );
    }
    let total: usize = summaries.iter().map(|s| s.images).sum();
    let _ = writeln!(
        o,
        "{} tasks, {total} images, seed {}",
        summaries.len(),
        pool.seed
    );
    let _ = writeln!(o, "\nclasses (images: train/val/test):");
    for s in &summaries {
        let list: Vec<String> = s
            .classes
            .iter()
            .map(|(c, tr, va, te)| format!("{c} {} ({tr}/{va}/{te})", tr + va + te))
            .collect();
        let _ = writeln!(o, "  {}: {}", s.name, list.join(", "));
    }
    let warn: Vec<String> = summaries.iter().flat_map(warnings).collect();
    if !warn.is_empty() {
        let _ = writeln!(o, "\nwarnings:");
        for x in warn {
            let _ = writeln!(o, "  {x}");
        }
    }
    if !pool.skipped.is_empty() {
        let _ = writeln!(o, "\nunreadable files, skipped ({}):", pool.skipped.len());
        for s in &pool.skipped {
            let _ = writeln!(o, "  {}: {}", s.path.display(), s.reason);
        }
    }
    o
}
