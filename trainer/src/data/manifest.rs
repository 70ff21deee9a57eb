//! Reading task folders: `<task>/manifest.csv` with `path,label,group,split` columns, image
//! paths relative to the task folder.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use super::{CropPolicy, Item, TaskItems};

#[derive(Deserialize)]
struct Row {
    path: String,
    label: String,
}

/// One task folder: every row of its manifest (all splits), labels numbered by sorted class
/// name. Returns the task (named after the folder, [`CropPolicy::RandomCrop`], weight 1) and
/// its class names in label order.
pub fn load_task(dir: &Path) -> Result<(TaskItems, Vec<String>)> {
    let manifest = dir.join("manifest.csv");
    let mut reader = csv::Reader::from_path(&manifest)
        .with_context(|| format!("{}: cannot open", manifest.display()))?;
    let rows: Vec<Row> = reader
        .deserialize()
        .collect::<std::result::Result<_, _>>()
        .with_context(|| {
            format!(
                "{}: bad manifest (need path,label columns)",
                manifest.display()
            )
        })?;
    ensure!(!rows.is_empty(), "{}: no images listed", manifest.display());
    let classes: Vec<String> = rows
        .iter()
        .map(|r| r.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let items = rows
        .into_iter()
        .map(|r| Item {
            path: dir.join(&r.path),
            label: classes.binary_search(&r.label).expect("label listed") as u32,
        })
        .collect();
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let task = TaskItems {
        name,
        items,
        crop: CropPolicy::RandomCrop,
        weight: 1.0,
    };
    Ok((task, classes))
}

/// Every sub-folder of `root` holding a `manifest.csv`, in sorted order.
pub fn load_tasks(root: &Path) -> Result<Vec<TaskItems>> {
    let mut dirs: Vec<_> = std::fs::read_dir(root)
        .with_context(|| format!("{}: cannot list directory", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("manifest.csv").is_file())
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        bail!(
            "{}: no task folders (with a manifest.csv) found",
            root.display()
        );
    }
    dirs.iter().map(|d| load_task(d).map(|t| t.0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_labels_by_sorted_class_name() {
        let dir = tempfile::tempdir().unwrap();
        let task = dir.path().join("toy");
        std::fs::create_dir(&task).unwrap();
        std::fs::write(
            task.join("manifest.csv"),
            "path,label,group,split\nimages/b/1.png,b,g1,\nimages/a/2.png,a,,train\nimages/c/3.png,c,g2,\n",
        )
        .unwrap();
        let (t, classes) = load_task(&task).unwrap();
        assert_eq!(t.name, "toy");
        assert_eq!(classes, ["a", "b", "c"]);
        let labels: Vec<u32> = t.items.iter().map(|i| i.label).collect();
        assert_eq!(labels, [1, 0, 2]);
        assert_eq!(t.items[0].path, task.join("images/b/1.png"));
        assert_eq!(load_tasks(dir.path()).unwrap().len(), 1);
        assert!(load_tasks(&task).is_err());
    }
}
