//! Collecting image paths from the command line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use mtpath_shared::preprocess::has_image_extension;

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("{}: cannot list directory", dir.display()))?;
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out)?;
        } else if has_image_extension(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Expand arguments into image files: files are kept as given (in order), directories are
/// searched recursively for JPEG/PNG/TIFF files in sorted order.
pub fn collect_images(args: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let before = out.len();
            walk(a, &mut out)?;
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
    if out.is_empty() {
        bail!("no images given");
    }
    Ok(out)
}
