//! The models offered under `/models/NAME` and their index, `/models/index.json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// A model offered under `/models/NAME`.
pub struct ServedModel {
    /// The name in the URL: the file or export folder's stem, `[A-Za-z0-9_-]`, `.safetensors`.
    pub name: String,
    /// The weights file served.
    pub file: PathBuf,
    /// The export's `card.json`, when there is one.
    pub card: Option<serde_json::Value>,
}

/// `path` (a safetensors file or an `mtpath export` folder) as a served model.
pub fn served_model(path: &Path) -> Result<ServedModel> {
    let (file, card_path) = if path.is_dir() {
        (path.join("model.safetensors"), Some(path.join("card.json")))
    } else {
        (path.to_path_buf(), None)
    };
    if !file.is_file() {
        bail!(
            "model {}: no such file; give a .safetensors file or an `mtpath export` folder",
            file.display()
        );
    }
    let card = card_path
        .filter(|c| c.is_file())
        .map(|c| -> Result<serde_json::Value> {
            let text =
                std::fs::read_to_string(&c).with_context(|| format!("reading {}", c.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", c.display()))
        })
        .transpose()?;
    let stem = path
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .trim_end_matches(".safetensors");
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(ServedModel {
        name: format!("{clean}.safetensors"),
        file,
        card,
    })
}

/// The models given with `--model`, else the released trunk when it is present; names must be
/// unique.
pub fn collect(given: &[PathBuf]) -> Result<Vec<ServedModel>> {
    // With no --model, the released trunk (when present) is offered and loads by default.
    let released: Vec<PathBuf> = if given.is_empty() {
        crate::released::find(crate::released::DEFAULT)
            .into_iter()
            .collect()
    } else {
        Vec::new()
    };
    let mut models: Vec<ServedModel> = Vec::new();
    for m in given.iter().chain(&released) {
        let served = served_model(m)?;
        if models.iter().any(|x| x.name == served.name) {
            bail!(
                "two models are named {}; rename one of the files",
                served.name
            );
        }
        models.push(served);
    }
    Ok(models)
}

/// `/models/index.json`: name, relative URL, size and card of each model, in order (the page
/// loads the first).
pub fn index_json(models: &[ServedModel]) -> Vec<u8> {
    let list: Vec<serde_json::Value> = models
        .iter()
        .map(|m| {
            serde_json::json!({
                "name": m.name,
                "url": format!("models/{}", m.name),
                "bytes": std::fs::metadata(&m.file).map(|x| x.len()).unwrap_or(0),
                "card": m.card,
            })
        })
        .collect();
    serde_json::to_vec_pretty(&serde_json::json!({ "models": list })).unwrap_or_default()
}
