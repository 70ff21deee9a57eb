//! The features file: one reader and one writer for what `mtpath features`, the feature cache
//! and the browser's "download features" write, and what `mtpath predict` reads.
//!
//! A safetensors file (readable by `safetensors.torch.load_file` as it is):
//!
//! | tensor | dtype | shape | meaning |
//! |---|---|---|---|
//! | `features` | F32 | [N, F] | one row per image |
//! | `labels` | I64 | [N] | class index within its task (task-pool files only) |
//! | `task` | I64 | [N] | task index into the `tasks` metadata (task-pool files only) |
//!
//! String metadata: `images` (JSON list of N names, always written), and whatever else the
//! writer records — `architecture`, `weights`, `preprocess` (JSON), and for task pools
//! `groups`, `splits`, `tasks`, `split`, `seed`.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

/// Name of the feature matrix.
pub const FEATURES: &str = "features";
/// Name of the per-row class index.
pub const LABELS: &str = "labels";
/// Name of the per-row task index.
pub const TASK: &str = "task";
/// Metadata key of the row names.
pub const IMAGES: &str = "images";

/// The contents of a features file.
#[derive(Debug, Clone, PartialEq)]
pub struct FeaturesFile {
    /// Row-major `[n, dim]` features.
    pub features: Vec<f32>,
    /// Rows.
    pub n: usize,
    /// Feature length.
    pub dim: usize,
    /// One name per row (image path or file name); `row{i}` when the file carried none.
    pub images: Vec<String>,
    /// Class index of each row, when known.
    pub labels: Option<Vec<i64>>,
    /// Task index of each row, when known.
    pub task: Option<Vec<i64>>,
    /// The other string metadata (`architecture`, `weights`, `preprocess`, …).
    pub metadata: BTreeMap<String, String>,
}

impl FeaturesFile {
    /// A file of `n × dim` features named by `images`, without labels or metadata.
    pub fn new(features: Vec<f32>, n: usize, dim: usize, images: Vec<String>) -> Result<Self> {
        let file = Self {
            features,
            n,
            dim,
            images,
            labels: None,
            task: None,
            metadata: BTreeMap::new(),
        };
        file.check("features file")?;
        Ok(file)
    }

    /// Record metadata `key` (a plain string, or JSON for structured values).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.metadata.insert(key.to_string(), value.into());
        self
    }

    fn check(&self, source: &str) -> Result<()> {
        let bad = |message: String| Err(Error::invalid(format!("{source}: {message}")));
        if self.features.len() != self.n * self.dim {
            return bad(format!(
                "{} values for {} rows of {} features",
                self.features.len(),
                self.n,
                self.dim
            ));
        }
        if self.images.len() != self.n {
            return bad(format!("{} names for {} rows", self.images.len(), self.n));
        }
        for (name, v) in [(LABELS, &self.labels), (TASK, &self.task)] {
            if let Some(v) = v {
                if v.len() != self.n {
                    return bad(format!("{} `{name}` values for {} rows", v.len(), self.n));
                }
            }
        }
        Ok(())
    }

    /// The safetensors bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.check("features file")?;
        let invalid = |e: safetensors::SafeTensorError| Error::invalid(e.to_string());
        let features: Vec<u8> = self.features.iter().flat_map(|v| v.to_le_bytes()).collect();
        let ints = |v: &[i64]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let labels = self.labels.as_deref().map(ints);
        let task = self.task.as_deref().map(ints);
        let mut views = vec![(
            FEATURES,
            TensorView::new(Dtype::F32, vec![self.n, self.dim], &features).map_err(invalid)?,
        )];
        for (name, bytes) in [(LABELS, &labels), (TASK, &task)] {
            if let Some(bytes) = bytes {
                views.push((
                    name,
                    TensorView::new(Dtype::I64, vec![self.n], bytes).map_err(invalid)?,
                ));
            }
        }
        let mut meta: std::collections::HashMap<String, String> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.insert(
            IMAGES.to_string(),
            serde_json::to_string(&self.images).map_err(|e| Error::invalid(e.to_string()))?,
        );
        safetensors::serialize(views, Some(meta)).map_err(invalid)
    }

    /// Write the file atomically (a reader never sees a partial file).
    pub fn write(&self, path: &Path) -> Result<()> {
        crate::fsutil::write_atomic(path, &self.to_bytes()?)
    }

    /// Parse `bytes`; `source` names the file in errors.
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let fix = "write one with `mtpath features` or the explorer's \"features\" download";
        let bad = |message: String| Error::invalid(format!("{source}: {message}"));
        let (_, meta) = SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e}); {fix}")))?;
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| bad(format!("unreadable safetensors ({e}); {fix}")))?;
        let t = st
            .tensor(FEATURES)
            .map_err(|_| bad(format!("no `{FEATURES}` tensor; {fix}")))?;
        if t.dtype() != Dtype::F32 || t.shape().len() != 2 {
            return Err(bad(format!(
                "`{FEATURES}` must be float32 [N, F], found {:?} {:?}",
                t.dtype(),
                t.shape()
            )));
        }
        let (n, dim) = (t.shape()[0], t.shape()[1]);
        let features = t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ints = |name: &str| -> Result<Option<Vec<i64>>> {
            let Ok(t) = st.tensor(name) else {
                return Ok(None);
            };
            if t.dtype() != Dtype::I64 || t.shape() != [n] {
                return Err(bad(format!(
                    "`{name}` must be int64 [{n}], found {:?} {:?}",
                    t.dtype(),
                    t.shape()
                )));
            }
            Ok(Some(
                t.data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                    .collect(),
            ))
        };
        let labels = ints(LABELS)?;
        let task = ints(TASK)?;
        let mut metadata: BTreeMap<String, String> = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let images = metadata
            .remove(IMAGES)
            .and_then(|s| serde_json::from_str::<Vec<String>>(&s).ok())
            .filter(|v| v.len() == n)
            .unwrap_or_else(|| (0..n).map(|i| format!("row{i}")).collect());
        let file = Self {
            features,
            n,
            dim,
            images,
            labels,
            task,
            metadata,
        };
        file.check(source)?;
        Ok(file)
    }

    /// Read the file at `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            path: path.to_path_buf(),
            error: e,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_labels_and_metadata() {
        let mut f = FeaturesFile::new(
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            2,
            3,
            vec!["a.png".into(), "b.png".into()],
        )
        .unwrap()
        .with("architecture", "resnet18");
        f.labels = Some(vec![0, 1]);
        f.task = Some(vec![3, 3]);
        let back = FeaturesFile::from_bytes(&f.to_bytes().unwrap(), "x").unwrap();
        assert_eq!(back, f);
        assert_eq!(back.row(1), &[4.0, 5.0, 6.0]);
    }

    #[test]
    fn rejects_mismatched_shapes_and_foreign_files() {
        assert!(FeaturesFile::new(vec![1.0; 5], 2, 3, vec!["a".into(), "b".into()]).is_err());
        assert!(FeaturesFile::new(vec![1.0; 6], 2, 3, vec!["a".into()]).is_err());
        let err = FeaturesFile::from_bytes(b"not safetensors", "feats.bin").unwrap_err();
        assert!(err.to_string().contains("feats.bin"), "{err}");
        let other = safetensors::serialize(
            [(
                "weight",
                TensorView::new(Dtype::F32, vec![1], &[0u8; 4]).unwrap(),
            )],
            None,
        )
        .unwrap();
        let err = FeaturesFile::from_bytes(&other, "w.safetensors").unwrap_err();
        assert!(err.to_string().contains("no `features` tensor"), "{err}");
    }

    #[test]
    fn names_default_to_row_numbers() {
        let view = TensorView::new(Dtype::F32, vec![2, 1], &[0u8; 8]).unwrap();
        let bytes = safetensors::serialize([(FEATURES, view)], None).unwrap();
        let f = FeaturesFile::from_bytes(&bytes, "x").unwrap();
        assert_eq!(f.images, ["row0", "row1"]);
    }
}
