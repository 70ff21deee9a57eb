//! The released trunks in the repository's `models/` folder: pathology feature extractors
//! pre-trained by mtpath itself (see each folder's card.md), named on the command line
//! (`--weights pool-r18`) and served to the explorer by default.

use std::path::{Path, PathBuf};

/// Released trunks: the name users type, and the folder (an `mtpath export`) under `models/`.
pub const RELEASED: [(&str, &str); 1] = [("pool-r18", "pool-r18")];

/// The name of the trunk the explorer loads by default.
pub const DEFAULT: &str = "pool-r18";

/// Where `models/` may be: `$MTPATH_MODELS`, beside the executable's workspace
/// (`target/release/mtpath` → `models/`), the current folder, and the source tree this binary
/// was built from.
fn model_roots() -> Vec<PathBuf> {
    let mut roots = Vec::new();
    if let Some(p) = std::env::var_os("MTPATH_MODELS") {
        roots.push(PathBuf::from(p));
    }
    if let Ok(exe) = std::env::current_exe() {
        for up in exe.ancestors().skip(1).take(3) {
            roots.push(up.join("models"));
        }
    }
    roots.push(PathBuf::from("models"));
    roots.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models"));
    roots
}

/// The export folder of released trunk `name`, if it is one and is present.
pub fn find(name: &str) -> Option<PathBuf> {
    let (_, folder) = RELEASED.iter().find(|(n, _)| *n == name)?;
    model_roots()
        .into_iter()
        .map(|r| r.join(folder))
        .find(|d| d.join("model.safetensors").is_file())
}

/// A `--weights` / `--init` value with released names replaced by their model file; anything
/// else (a path, `random`, `none`, `imagenet`) unchanged. A released name whose folder cannot
/// be found is an error that says where it was looked for.
pub fn resolve_weights(arg: &str) -> anyhow::Result<String> {
    if !RELEASED.iter().any(|(n, _)| *n == arg) {
        return Ok(arg.to_string());
    }
    match find(arg) {
        Some(dir) => Ok(dir.join("model.safetensors").display().to_string()),
        None => anyhow::bail!(
            "`{arg}` is mtpath's released trunk, but its folder was not found (looked in {}); \
             set MTPATH_MODELS to the repository's models/ folder",
            model_roots()
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_values_pass_through_and_missing_releases_say_where_they_looked() {
        for v in ["random", "none", "imagenet", "some/file.safetensors"] {
            assert_eq!(resolve_weights(v).unwrap(), v);
        }
        if find("pool-r18").is_none() {
            let e = resolve_weights("pool-r18").unwrap_err().to_string();
            assert!(e.contains("MTPATH_MODELS"), "{e}");
        } else {
            let p = resolve_weights("pool-r18").unwrap();
            assert!(p.ends_with("model.safetensors"), "{p}");
        }
    }
}
