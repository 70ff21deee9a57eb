//! Reading one task folder (a `manifest.csv`, or one subfolder per class) into samples, and
//! checking its images. Per-image problems are collected (to be skipped or reported);
//! structural problems (missing folder or column, one class, no images) are errors.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;

use super::config::TaskConfig;
use super::{ImageCheck, LoadOptions, Sample, Skipped};
use crate::images::{sorted_entries, ImageWalker};

/// Name of the manifest file inside a task folder.
pub const MANIFEST: &str = "manifest.csv";
/// Smallest accepted image side, in pixels.
pub const MIN_SIDE: u32 = 8;
/// Largest accepted image side, in pixels.
pub const MAX_SIDE: u32 = 32768;
/// Largest accepted image area, in pixels.
pub const MAX_PIXELS: u64 = 1 << 28;
/// How many per-image problems an error lists before giving the count.
const LIST_AT_MOST: usize = 10;

/// The split a source gives a row (`split` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Given {
    None,
    Train,
    Test,
}

/// A task folder read and checked, before splitting.
pub struct LoadedTask {
    pub name: String,
    pub root: PathBuf,
    /// Sorted class names of the kept samples.
    pub classes: Vec<String>,
    /// Kept samples (labels index `classes`) with the split given by the source.
    pub samples: Vec<(Sample, Given)>,
    pub skipped: Vec<Skipped>,
    pub image_sizes: Option<((u32, u32), (u32, u32))>,
}

/// A row of the manifest or a file of an image folder, label not yet indexed.
pub(super) struct Entry {
    rel: String,
    pub(super) path: PathBuf,
    label: String,
    group: String,
    given: Given,
    /// "manifest.csv line N" or "class folder `x`".
    place: String,
    /// Manifest line or file index: problems are reported in this order.
    order: u64,
    /// What to do about a bad entry.
    remedy: &'static str,
}

const ROW_REMEDY: &str = "fix or remove the manifest row";
const FILE_REMEDY: &str = "replace or remove the file";

/// Read, check and index one task.
pub fn load_task(cfg: &TaskConfig, opts: &LoadOptions) -> Result<LoadedTask> {
    let name = cfg.task_name();
    let root = cfg.path.clone();
    if !root.is_dir() {
        if root.exists() {
            bail!(
                "task `{name}`: {} is not a folder; `path` must name a task folder \
                 (with manifest.csv, or one subfolder per class)",
                root.display()
            );
        }
        bail!(
            "task `{name}`: folder {} does not exist; fix the task's `path` (relative paths \
             are resolved against the pool file's folder)",
            root.display()
        );
    }
    let manifest = root.join(MANIFEST);
    let (source, entries, mut problems) = if manifest.is_file() {
        let (e, p) = read_manifest(&root, &manifest)?;
        (manifest, e, p)
    } else {
        let (e, p) = read_image_folder(&root)?;
        (root.clone(), e, p)
    };
    if entries.is_empty() && problems.is_empty() {
        bail!(
            "task `{name}` ({}): no images; list them in {MANIFEST} (path,label,group,split) \
             or put them in one subfolder per class",
            source.display()
        );
    }

    let checked: Vec<Result<Option<(u32, u32)>, String>> = entries
        .par_iter()
        .map(|e| check_image(&e.path, opts.check))
        .collect();
    let mut kept = Vec::with_capacity(entries.len());
    let mut sizes: Option<((u32, u32), (u32, u32))> = None;
    for (e, r) in entries.into_iter().zip(checked) {
        match r {
            Ok(dims) => {
                if let Some((w, h)) = dims {
                    sizes = Some(match sizes {
                        None => ((w, h), (w, h)),
                        Some(((a, b), (c, d))) => ((a.min(w), b.min(h)), (c.max(w), d.max(h))),
                    });
                }
                kept.push(e);
            }
            Err(reason) => problems.push((
                e.order,
                Skipped {
                    path: e.path,
                    reason: format!("{}: {reason}; {}", e.place, e.remedy),
                },
            )),
        }
    }
    problems.sort_by_key(|(order, _)| *order);
    let problems: Vec<Skipped> = problems.into_iter().map(|(_, s)| s).collect();
    if !problems.is_empty() && !opts.skip_bad {
        return Err(problems_error(&name, &source, &problems));
    }
    if kept.is_empty() {
        bail!(
            "task `{name}` ({}): none of its {} images is usable (all skipped, see above); \
             fix them or remove the task from the pool",
            source.display(),
            problems.len()
        );
    }
    let classes: Vec<String> = kept
        .iter()
        .map(|e| e.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if classes.len() < 2 {
        bail!(
            "task `{name}` ({}): only one class (`{}`); a classification task needs at least \
             two classes: add images of other classes or remove the task from the pool",
            source.display(),
            classes[0]
        );
    }
    let index: BTreeMap<&str, u32> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i as u32))
        .collect();
    let samples = kept
        .iter()
        .map(|e| {
            let sample = Sample {
                path: e.path.clone(),
                rel: e.rel.clone(),
                label: index[e.label.as_str()],
                group: e.group.clone(),
            };
            (sample, e.given)
        })
        .collect();
    Ok(LoadedTask {
        name,
        root,
        classes,
        samples,
        skipped: problems,
        image_sizes: if opts.check == ImageCheck::None {
            None
        } else {
            sizes
        },
    })
}

/// The error for per-image problems: the first few with reasons, then the count.
fn problems_error(name: &str, source: &Path, problems: &[Skipped]) -> anyhow::Error {
    let mut msg = format!(
        "task `{name}` ({}): {} bad image{}:",
        source.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems.iter().take(LIST_AT_MOST) {
        msg.push_str(&format!("\n  {}: {}", p.path.display(), p.reason));
    }
    if problems.len() > LIST_AT_MOST {
        msg.push_str(&format!(
            "\n  ... and {} more",
            problems.len() - LIST_AT_MOST
        ));
    }
    msg.push_str("\nfix or remove them, or pass --skip-bad to skip them (they are listed)");
    anyhow!(msg)
}

/// `rel` as normalised `/`-separated components, or why it is not a path inside the folder.
fn normalise_rel(rel: &str) -> Result<String, String> {
    let p = Path::new(rel);
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(format!(
                    "path `{rel}` leaves the task folder (`..` or absolute); paths must be \
                     relative to the task folder"
                ))
            }
        }
    }
    if parts.is_empty() {
        return Err("empty path".into());
    }
    Ok(parts.join("/"))
}

/// Entries and per-entry problems (with their manifest line or file index) of a task.
pub(super) type TaskRows = (Vec<Entry>, Vec<(u64, Skipped)>);

fn read_manifest(root: &Path, manifest: &Path) -> Result<TaskRows> {
    let file = std::fs::File::open(manifest)
        .with_context(|| format!("{}: cannot read the manifest", manifest.display()))?;
    parse_manifest(root, manifest, file)
}

/// The rows of a manifest read from `input`; `manifest` names it in messages and problems.
pub(super) fn parse_manifest(
    root: &Path,
    manifest: &Path,
    input: impl std::io::Read,
) -> Result<TaskRows> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(input);
    let headers = reader
        .headers()
        .with_context(|| format!("{}: cannot read the header line", manifest.display()))?
        .clone();
    let expected = ["path", "label", "group", "split"];
    // Where a tile came from, as `mtpath tile` writes it: kept for the reader, not used here.
    let informational = ["slide", "x", "y", "size"];
    let mut col: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, h) in headers.iter().enumerate() {
        let h = h.trim_start_matches('\u{feff}');
        if informational.iter().any(|e| e.eq_ignore_ascii_case(h)) {
            continue;
        }
        match expected.iter().find(|e| e.eq_ignore_ascii_case(h)) {
            Some(e) => {
                if col.insert(e, i).is_some() {
                    bail!(
                        "{}: column `{h}` appears twice in the header; keep one",
                        manifest.display()
                    );
                }
            }
            None => bail!(
                "{}: unknown column `{h}` in the header; the columns are path,label,group,split \
                 (group and split may be left out; slide,x,y,size as `mtpath tile` writes them \
                 are allowed too)",
                manifest.display()
            ),
        }
    }
    for required in ["path", "label"] {
        if !col.contains_key(required) {
            bail!(
                "{}: missing column `{required}` (header is `{}`); the header must be \
                 path,label,group,split (group and split may be left out)",
                manifest.display(),
                headers.iter().collect::<Vec<_>>().join(",")
            );
        }
    }
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen_files: BTreeMap<PathBuf, u64> = BTreeMap::new();
    for record in reader.records() {
        let record = record.map_err(|e| match e.kind() {
            csv::ErrorKind::UnequalLengths {
                pos: Some(pos),
                expected_len,
                len,
            } => anyhow!(
                "{} line {}: {len} fields, but the header has {expected_len}; give every row \
                 path,label,group,split (empty fields are fine; quote fields that contain commas)",
                manifest.display(),
                pos.line()
            ),
            _ => anyhow!(
                "{}: {e}; the manifest must be UTF-8 CSV with columns path,label,group,split",
                manifest.display()
            ),
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        let place = format!("{MANIFEST} line {line}");
        let get = |c: &str| {
            col.get(c)
                .and_then(|&i| record.get(i))
                .unwrap_or("")
                .to_string()
        };
        let rel = get("path");
        let mut problem = |path: PathBuf, reason: String| {
            problems.push((
                line,
                Skipped {
                    path,
                    reason: format!("{place}: {reason}; {ROW_REMEDY}"),
                },
            ))
        };
        let norm = match normalise_rel(&rel) {
            Ok(n) => n,
            Err(reason) => {
                let path = if rel.is_empty() {
                    manifest.to_path_buf()
                } else {
                    root.join(&rel)
                };
                problem(path, reason);
                continue;
            }
        };
        let path = root.join(&rel);
        let label = get("label");
        if label.is_empty() {
            problem(path, "no label".into());
            continue;
        }
        let given = match get("split").to_ascii_lowercase().as_str() {
            "" => Given::None,
            "train" => Given::Train,
            "test" => Given::Test,
            other => {
                problem(
                    path,
                    format!("split `{other}` is not `train`, `test` or empty"),
                );
                continue;
            }
        };
        if let Some(first) = seen.insert(norm.clone(), line) {
            seen.insert(norm, first);
            problem(
                path,
                format!("same image as line {first} (duplicate path `{rel}`)"),
            );
            continue;
        }
        // Two rows naming one file by different paths (through a link) are one image.
        if let Ok(canonical) = path.canonicalize() {
            if let Some(&first) = seen_files.get(&canonical) {
                problem(
                    path,
                    format!("the same file as line {first} (reached through a link)"),
                );
                continue;
            }
            seen_files.insert(canonical, line);
        }
        let group = get("group");
        entries.push(Entry {
            group: if group.is_empty() { norm } else { group },
            rel,
            path,
            label,
            given,
            place,
            order: line,
            remedy: ROW_REMEDY,
        });
    }
    Ok((entries, problems))
}

/// Image-folder layout: one subfolder per class, `.jpg/.jpeg/.png/.tif/.tiff` files inside
/// (recursively); each file is its own group. Hidden files and other extensions are ignored.
/// Links are followed, but a folder or file reached a second time is a problem (a link that
/// loops, or one image under two classes), listed like a bad image.
fn read_image_folder(root: &Path) -> Result<TaskRows> {
    let mut entries = Vec::new();
    let mut problems = Vec::new();
    let mut walker = ImageWalker::new();
    let class_dirs: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect();
    walker.reserve(root)?;
    for class_dir in &class_dirs {
        walker.reserve(class_dir)?;
    }
    for class_dir in class_dirs {
        let label = class_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut files = Vec::new();
        walker.walk(&class_dir, &mut files)?;
        for (path, why) in walker.passed_over.drain(..) {
            problems.push((
                entries.len() as u64,
                Skipped {
                    path,
                    reason: format!("class folder `{label}`: passed over: {why}"),
                },
            ));
        }
        for path in files {
            let rel = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            entries.push(Entry {
                group: rel.clone(),
                rel,
                path,
                label: label.clone(),
                given: Given::None,
                place: format!("class folder `{label}`"),
                order: entries.len() as u64,
                remedy: FILE_REMEDY,
            });
        }
    }
    Ok((entries, problems))
}

fn check_dims(w: u32, h: u32) -> Result<(), String> {
    let bad_side = |s: u32| !(MIN_SIDE..=MAX_SIDE).contains(&s);
    if bad_side(w) || bad_side(h) || u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(format!(
            "image is {w}x{h} px; sides must be {MIN_SIDE}..={MAX_SIDE} px and the area at \
             most 2^28 pixels (resize or crop it)"
        ));
    }
    Ok(())
}

fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".into(),
        _ => format!("cannot read the file ({e})"),
    }
}

/// Check one image: existence and non-zero size always; then its header dimensions or a
/// full decode with the product's decoder. Returns the size when it was read.
pub fn check_image(path: &Path, check: ImageCheck) -> Result<Option<(u32, u32)>, String> {
    let meta = std::fs::metadata(path).map_err(|e| io_reason(&e))?;
    if meta.is_dir() {
        return Err("is a folder, not an image file".into());
    }
    if meta.len() == 0 {
        return Err("empty file (0 bytes), not an image".into());
    }
    match check {
        ImageCheck::None => Ok(None),
        ImageCheck::Header => {
            let (w, h) = image::ImageReader::open(path)
                .map_err(|e| io_reason(&e))?
                .with_guessed_format()
                .map_err(|e| io_reason(&e))?
                .into_dimensions()
                .map_err(|e| format!("not a readable image ({e})"))?;
            check_dims(w, h)?;
            Ok(Some((w, h)))
        }
        ImageCheck::Decode => {
            let bytes = std::fs::read(path).map_err(|e| io_reason(&e))?;
            // Refuse absurd sizes before decoding them.
            if let Ok((w, h)) = image::ImageReader::new(Cursor::new(&bytes))
                .with_guessed_format()
                .map_err(|_| ())
                .and_then(|r| r.into_dimensions().map_err(|_| ()))
            {
                check_dims(w, h)?;
            }
            let img = mtpath_shared::preprocess::decode_image(&bytes).map_err(|e| e.to_string())?;
            check_dims(img.width(), img.height())?;
            Ok(Some((img.width(), img.height())))
        }
    }
}
