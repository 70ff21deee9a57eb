//! Finding image files in folders, the one way every command does it: links are followed, but
//! no folder is searched twice (a link back to a parent would loop forever) and no file is
//! listed twice (the same image under two class folders would carry two labels and could land
//! in both train and test). Hidden files and folders are ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mtpath_shared::preprocess::has_image_extension;

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .map(|n| n.to_string_lossy().starts_with('.'))
        .unwrap_or(false)
}

/// A folder's visible entries (hidden ones dropped), sorted by path.
pub fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .and_then(|rd| rd.map(|e| e.map(|e| e.path())).collect())
        .with_context(|| {
            format!(
                "{}: cannot list the folder (check permissions)",
                dir.display()
            )
        })?;
    v.retain(|p| !is_hidden(p));
    v.sort();
    Ok(v)
}

/// Searches folders for image files, remembering every folder and file it has seen by its
/// canonical path (links resolved), so that what one walk finds never repeats, across all the
/// folders given to it.
#[derive(Debug, Default)]
pub struct ImageWalker {
    dirs: HashMap<PathBuf, PathBuf>,
    reserved: HashMap<PathBuf, PathBuf>,
    files: HashMap<PathBuf, PathBuf>,
    /// What was passed over, and why: folders and files reached a second time (through links)
    /// and links that lead nowhere.
    pub passed_over: Vec<(PathBuf, String)>,
}

impl ImageWalker {
    /// A walker that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Set folders apart before walking: a link into one of them from elsewhere is passed over,
    /// and each is searched only by its own [`ImageWalker::walk`] call. A task reserves its
    /// folder and its class folders, so that no link can move one class's images into another.
    pub fn reserve(&mut self, dir: &Path) -> Result<()> {
        let canonical = dir
            .canonicalize()
            .with_context(|| format!("{}: cannot resolve the folder", dir.display()))?;
        self.reserved.insert(canonical, dir.to_path_buf());
        Ok(())
    }

    /// Append the image files (`.jpg/.jpeg/.png/.tif/.tiff`) under `dir`, recursively, in
    /// sorted order; a folder or file already seen is passed over (see `passed_over`).
    pub fn walk(&mut self, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        self.search(dir, out, true)
    }

    fn search(&mut self, dir: &Path, out: &mut Vec<PathBuf>, top: bool) -> Result<()> {
        let canonical = dir
            .canonicalize()
            .with_context(|| format!("{}: cannot resolve the folder", dir.display()))?;
        let seen = self.dirs.get(&canonical).or(if top {
            None
        } else {
            self.reserved.get(&canonical)
        });
        if let Some(first) = seen {
            self.passed_over.push((
                dir.to_path_buf(),
                format!(
                    "the folder {} again (a link loops back to a parent or leads to a folder \
                     already searched); remove the link",
                    first.display()
                ),
            ));
            return Ok(());
        }
        self.dirs.insert(canonical, dir.to_path_buf());
        for p in sorted_entries(dir)? {
            // `metadata` follows links; a link to nothing fails it.
            let Ok(meta) = std::fs::metadata(&p) else {
                if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
                    self.passed_over
                        .push((p, "a link to nothing (its target is gone)".into()));
                    continue;
                }
                bail!("{}: cannot read (check permissions)", p.display());
            };
            if meta.is_dir() {
                self.search(&p, out, false)?;
            } else if has_image_extension(&p) {
                let canonical = p
                    .canonicalize()
                    .with_context(|| format!("{}: cannot resolve", p.display()))?;
                if let Some(first) = self.files.get(&canonical) {
                    self.passed_over.push((
                        p,
                        format!(
                            "the same file as {} (reached again through a link); remove the \
                             link",
                            first.display()
                        ),
                    ));
                    continue;
                }
                self.files.insert(canonical, p.clone());
                out.push(p);
            }
        }
        Ok(())
    }
}

/// Expand arguments into image files: files are kept as given (in order), folders are searched
/// recursively for JPEG/PNG/TIFF files in sorted order ([`ImageWalker`]); what a walk passes
/// over is printed as a warning.
pub fn collect_images(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut walker = ImageWalker::new();
    for a in args {
        if a.is_dir() {
            let before = out.len();
            walker.walk(a, &mut out)?;
            if out.len() == before {
                bail!(
                    "{}: no .jpg/.jpeg/.png/.tif/.tiff files in this directory",
                    a.display()
                );
            }
        } else if a.exists() {
            out.push(a.clone());
        } else {
            bail!("{}: no such file or directory", a.display());
        }
    }
    for (path, why) in &walker.passed_over {
        eprintln!("warning: passed over {}: {why}", path.display());
    }
    if out.is_empty() {
        bail!("no images given");
    }
    Ok(out)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn links_to_parents_neither_loop_nor_repeat_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("a/1.jpg"));
        touch(&root.join("a/2.png"));
        touch(&root.join("b/3.jpg"));
        // Two loops (exponential if followed) and a second way to a's files.
        symlink(root, root.join("a/up")).unwrap();
        symlink(root.join("b"), root.join("b/self")).unwrap();
        symlink(root.join("a/1.jpg"), root.join("b/again.jpg")).unwrap();
        symlink(root.join("gone.jpg"), root.join("b/broken.jpg")).unwrap();
        let mut walker = ImageWalker::new();
        let mut out = Vec::new();
        walker.walk(root, &mut out).unwrap();
        let names: Vec<String> = out
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a/1.jpg", "a/2.png", "b/3.jpg"]);
        let why: Vec<&str> = walker.passed_over.iter().map(|(_, w)| w.as_str()).collect();
        assert_eq!(why.len(), 4, "{why:?}");
        assert!(why.iter().filter(|w| w.contains("again")).count() == 3);
        assert!(why.iter().any(|w| w.contains("link to nothing")));
    }

    #[test]
    fn a_file_linked_into_a_second_folder_is_listed_once_across_walks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("tumour/x.jpg"));
        std::fs::create_dir_all(root.join("normal")).unwrap();
        symlink(root.join("tumour/x.jpg"), root.join("normal/x.jpg")).unwrap();
        touch(&root.join("normal/.hidden.jpg"));
        let mut walker = ImageWalker::new();
        let (mut t, mut n) = (Vec::new(), Vec::new());
        walker.walk(&root.join("tumour"), &mut t).unwrap();
        walker.walk(&root.join("normal"), &mut n).unwrap();
        assert_eq!(t.len(), 1);
        assert!(n.is_empty(), "{n:?}");
        assert_eq!(walker.passed_over.len(), 1);
    }

    #[test]
    fn a_link_into_a_reserved_class_folder_does_not_move_its_images() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        touch(&root.join("b/1.jpg"));
        std::fs::create_dir_all(root.join("a")).unwrap();
        symlink(root.join("b"), root.join("a/b")).unwrap();
        symlink(root, root.join("a/up")).unwrap();
        let mut walker = ImageWalker::new();
        for d in [root.to_path_buf(), root.join("a"), root.join("b")] {
            walker.reserve(&d).unwrap();
        }
        let (mut a, mut b) = (Vec::new(), Vec::new());
        walker.walk(&root.join("a"), &mut a).unwrap();
        walker.walk(&root.join("b"), &mut b).unwrap();
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(b, [root.join("b/1.jpg")]);
        assert_eq!(walker.passed_over.len(), 2);
    }
}
