//! The probe file: a fitted linear probe as JSON, written by the browser explorer and read by
//! `mtpath predict`, so a classifier trained in the page classifies natively the same way.

use serde::{Deserialize, Serialize};

use super::{LinearModel, ModelKind};
use crate::{Error, Result};

/// The `format` tag of a probe file.
pub const PROBE_FORMAT: &str = "mtpath-probe/1";

/// Which feature extractor the probe's inputs came from: a probe only makes sense on the
/// features of the same model and preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSource {
    /// Architecture name, e.g. `resnet50`.
    pub architecture: String,
    /// Feature dimension.
    pub feature_dim: usize,
    /// Side of the centre crop fed to the network.
    pub input_size: u32,
    /// Shorter side after resizing, before the crop.
    pub resize: u32,
    /// SHA-256 (hex) of the model file, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_sha256: Option<String>,
    /// How images became the network's input (`resize`, `center-crop`, `grid`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<String>,
}

impl FeatureSource {
    /// The source a features file records in its metadata (`architecture`, `preprocess`,
    /// `weights_sha256`, as `mtpath features` and the page write them); `None` when it
    /// records no architecture.
    pub fn from_features_metadata(
        metadata: &std::collections::BTreeMap<String, String>,
        feature_dim: usize,
    ) -> Option<Self> {
        let architecture = metadata.get("architecture")?.clone();
        let preprocess: serde_json::Value = metadata
            .get("preprocess")
            .and_then(|p| serde_json::from_str(p).ok())
            .unwrap_or_default();
        let size = |key: &str| preprocess[key].as_u64().map_or(0, |v| v as u32);
        Some(Self {
            architecture,
            feature_dim,
            input_size: size("crop"),
            resize: size("resize_shorter"),
            model_sha256: metadata
                .get("weights_sha256")
                .filter(|s| !s.is_empty())
                .cloned(),
            transform: preprocess["transform"].as_str().map(str::to_string),
        })
    }

    /// How `actual` differs from `self` (what a probe expects), one line per field that both
    /// record (0 for sizes and `None` mean unknown, and are not compared).
    pub fn differences(&self, actual: &FeatureSource) -> Vec<String> {
        let mut out = Vec::new();
        let mut differ = |what: &str, expected: String, got: String| {
            out.push(format!(
                "{what}: the probe's {expected}, the features' {got}"
            ));
        };
        if self.architecture != actual.architecture {
            differ(
                "architecture",
                self.architecture.clone(),
                actual.architecture.clone(),
            );
        }
        if self.feature_dim != actual.feature_dim {
            differ(
                "feature length",
                self.feature_dim.to_string(),
                actual.feature_dim.to_string(),
            );
        }
        for (what, a, b) in [
            ("input size (crop)", self.input_size, actual.input_size),
            ("resize (shorter side)", self.resize, actual.resize),
        ] {
            if a != 0 && b != 0 && a != b {
                differ(what, format!("{a} px"), format!("{b} px"));
            }
        }
        if let (Some(a), Some(b)) = (&self.model_sha256, &actual.model_sha256) {
            if !a.eq_ignore_ascii_case(b) {
                differ("model file (SHA-256)", a.clone(), b.clone());
            }
        }
        if let (Some(a), Some(b)) = (&self.transform, &actual.transform) {
            if a != b {
                differ("evaluation transform", a.clone(), b.clone());
            }
        }
        out
    }
}

/// Cross-validation that chose C, kept for the record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CvSummary {
    /// Folds used.
    pub folds: usize,
    /// Mean cross-validated balanced accuracy at the chosen C.
    pub balanced_accuracy: f64,
    /// Mean cross-validated accuracy at the chosen C.
    pub accuracy: f64,
    /// Training tiles.
    pub n_train: usize,
}

/// A probe file's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProbeFile {
    /// Always [`PROBE_FORMAT`].
    pub format: String,
    /// `logistic` or `svm`.
    pub kind: String,
    /// Class names, index = class id.
    pub classes: Vec<String>,
    /// The regularisation strength used.
    pub c: f64,
    /// Feature dimension.
    pub n_features: usize,
    /// Weight rows (1 for two classes, else one per class), each `n_features` long.
    pub coef: Vec<Vec<f64>>,
    /// One intercept per weight row.
    pub intercept: Vec<f64>,
    /// The feature extractor the probe expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<FeatureSource>,
    /// How C was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cv: Option<CvSummary>,
}

impl ProbeFile {
    /// Wrap a fitted model.
    pub fn new(model: &LinearModel, classes: Vec<String>, c: f64) -> Result<Self> {
        if classes.len() != model.n_classes {
            return Err(Error::invalid(format!(
                "probe: {} class names for a {}-class model",
                classes.len(),
                model.n_classes
            )));
        }
        Ok(Self {
            format: PROBE_FORMAT.to_string(),
            kind: match model.kind {
                ModelKind::Logistic => "logistic",
                ModelKind::Svm => "svm",
            }
            .to_string(),
            classes,
            c,
            n_features: model.n_features,
            coef: model
                .coef
                .chunks(model.n_features.max(1))
                .map(<[f64]>::to_vec)
                .collect(),
            intercept: model.intercept.clone(),
            features: None,
            cv: None,
        })
    }

    /// Parse and check a probe file; `source` names it in errors.
    pub fn from_json(text: &str, source: &str) -> Result<Self> {
        let p: ProbeFile = serde_json::from_str(text).map_err(|e| {
            Error::invalid(format!(
                "{source}: not a probe file ({e}); export one from the explorer's Probe panel"
            ))
        })?;
        if p.format != PROBE_FORMAT {
            return Err(Error::invalid(format!(
                "{source}: format {:?}, expected {PROBE_FORMAT:?}",
                p.format
            )));
        }
        p.model()
            .map_err(|e| Error::invalid(format!("{source}: {e}")))?;
        Ok(p)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::invalid(format!("probe JSON: {e}")))
    }

    /// The linear model, checked for consistent shapes.
    pub fn model(&self) -> Result<LinearModel> {
        let k = self.classes.len();
        if k < 2 {
            return Err(Error::invalid(format!(
                "probe has {k} classes; at least 2 needed"
            )));
        }
        let rows = if k == 2 { 1 } else { k };
        if self.coef.len() != rows
            || self.intercept.len() != rows
            || self.coef.iter().any(|r| r.len() != self.n_features)
        {
            return Err(Error::invalid(format!(
                "probe shapes disagree: {k} classes need {rows} weight rows of {} values and {rows} intercepts",
                self.n_features
            )));
        }
        let kind = match self.kind.as_str() {
            "logistic" => ModelKind::Logistic,
            "svm" => ModelKind::Svm,
            other => {
                return Err(Error::invalid(format!(
                    "probe kind {other:?}; expected \"logistic\" or \"svm\""
                )))
            }
        };
        if self
            .coef
            .iter()
            .flatten()
            .chain(&self.intercept)
            .any(|v| !v.is_finite())
        {
            return Err(Error::invalid("probe has non-finite weights"));
        }
        Ok(LinearModel {
            coef: self.coef.concat(),
            intercept: self.intercept.clone(),
            n_features: self.n_features,
            n_classes: k,
            kind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> LinearModel {
        LinearModel {
            coef: vec![1.0, -2.0, 0.5, 0.25, 0.0, 3.0],
            intercept: vec![0.1, 0.2, -0.3],
            n_features: 2,
            n_classes: 3,
            kind: ModelKind::Logistic,
        }
    }

    #[test]
    fn probe_file_round_trips_and_predicts_identically() {
        let m = model();
        let p = ProbeFile::new(&m, vec!["a".into(), "b".into(), "c".into()], 0.5).unwrap();
        let back = ProbeFile::from_json(&p.to_json().unwrap(), "p.json").unwrap();
        assert_eq!(back, p);
        let x = [0.3f32, -1.0, 2.0, 0.5];
        assert_eq!(
            back.model().unwrap().predict_proba(&x, 2).unwrap(),
            m.predict_proba(&x, 2).unwrap()
        );
    }

    #[test]
    fn probe_file_errors_name_the_file() {
        let e = ProbeFile::from_json("{}", "mine.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mine.json"), "{e}");
        let mut p =
            ProbeFile::new(&model(), vec!["a".into(), "b".into(), "c".into()], 1.0).unwrap();
        p.coef.pop();
        let e = ProbeFile::from_json(&p.to_json().unwrap(), "x.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.json") && e.contains("weight rows"), "{e}");
        assert!(ProbeFile::new(&model(), vec!["a".into()], 1.0).is_err());
    }
}
