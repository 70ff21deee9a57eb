//! The metadata records mtpath files carry, and their readers: [`ModelMetadata`] (every
//! file mtpath writes, under [`METADATA_KEY`]) and the [`ExportCard`] of exported web models
//! (under [`EXPORT_KEY`]); [`resolve_arch`], [`file_metadata`], [`export_card`] and
//! [`is_folded`] read them from a [`TensorFile`].

use std::fmt;
use std::str::FromStr;

use candle_core::DType;
use serde::{Deserialize, Serialize};

use super::{normalize_name, TensorFile};
use crate::backbone::Arch;
use crate::network::{HeadSpec, NetworkSpec};
use crate::{Error, Result};

/// Metadata key holding [`ModelMetadata`] as JSON in files mtpath writes.
pub const METADATA_KEY: &str = "mtpath";

/// What a trunk is and how its input is prepared: the one record that every model file
/// ([`ModelMetadata`]), export card ([`ExportCard`]) and training card embeds, flattened, so
/// their JSON keys are the same (`architecture`, `feature_dim`, `input_size`,
/// `resize_shorter`, `mean`, `std`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrunkInfo {
    /// Trunk architecture.
    pub architecture: Arch,
    /// Feature vector length.
    pub feature_dim: usize,
    /// Input side in pixels (centre crop).
    pub input_size: u32,
    /// Shorter side before cropping.
    pub resize_shorter: u32,
    /// Per-channel normalisation mean (RGB, on 0–1 values).
    pub mean: [f32; 3],
    /// Per-channel normalisation standard deviation.
    pub std: [f32; 3],
}

impl TrunkInfo {
    /// `arch` with ImageNet normalisation and 256 → 224 preprocessing.
    pub fn imagenet(arch: Arch) -> Self {
        Self {
            architecture: arch,
            feature_dim: arch.feature_dim(),
            input_size: 224,
            resize_shorter: 256,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }
}

/// What mtpath records in the files it writes: enough to rebuild and use the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// The trunk and its preprocessing.
    #[serde(flatten)]
    pub trunk: TrunkInfo,
    /// Outputs of torchvision's classifier, if the file has one.
    pub classifier: Option<usize>,
    /// Task heads (`heads.<i>`), with their classes.
    pub heads: Vec<HeadSpec>,
    /// mtpath version that wrote the file.
    pub mtpath_version: String,
}

impl ModelMetadata {
    /// Metadata for `spec` with ImageNet normalisation and 256 → 224 preprocessing.
    pub fn imagenet(spec: &NetworkSpec) -> Self {
        Self {
            trunk: TrunkInfo::imagenet(spec.arch),
            classifier: spec.classifier,
            heads: spec.heads.clone(),
            mtpath_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The network these weights belong to.
    pub fn spec(&self) -> NetworkSpec {
        NetworkSpec {
            arch: self.trunk.architecture,
            classifier: self.classifier,
            heads: self.heads.clone(),
        }
    }
}

/// Metadata key holding the [`ExportCard`] as JSON in exported files.
pub const EXPORT_KEY: &str = "mtpath_export";

/// [`ExportCard::format`] of the files written here.
pub const FORMAT: &str = "mtpath-folded";

/// [`ExportCard::format_version`]: bumped when the tensor layout changes.
pub const FORMAT_VERSION: u32 = 1;

/// What [`ExportCard::tensor_names`] says (and `card.md` repeats).
pub const TENSOR_NAMES: &str = "torchvision module names. `CONV.weight` + `CONV.bias`: a \
     convolution with the BatchNorm that follows it folded in (w' = w·γ/√(var+ε), \
     b' = β − mean·γ/√(var+ε)); a `CONV.weight` without bias is a plain convolution. \
     `NORM.scale` + `NORM.shift`: a BatchNorm that cannot fold (DenseNet's norm1, \
     transitionT.norm, norm5: they precede a ReLU), applied as y = x·scale + shift per channel.";

/// The floating type of the exported tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportDtype {
    /// 32-bit floats: features equal the source's up to rounding (~1e-7 relative).
    F32,
    /// 16-bit convolution kernels (the stem's kernel and the per-channel vectors stay f32,
    /// see [`crate::export::stays_f32`]): half the size; features within a few 1e-3 relative (measured
    /// 5e-4 to 2.4e-3 on the PyTorch fixtures).
    F16,
}

impl ExportDtype {
    /// The candle dtype.
    pub fn dtype(self) -> DType {
        match self {
            ExportDtype::F32 => DType::F32,
            ExportDtype::F16 => DType::F16,
        }
    }

    /// `f32` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            ExportDtype::F32 => "f32",
            ExportDtype::F16 => "f16",
        }
    }
}

impl fmt::Display for ExportDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ExportDtype {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(ExportDtype::F32),
            "f16" | "float16" | "half" => Ok(ExportDtype::F16),
            _ => Err(Error::invalid(format!(
                "unknown export dtype `{s}`; choose f32 or f16"
            ))),
        }
    }
}

/// The file an export was made from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The path as given.
    pub file: String,
    /// SHA-256 of its bytes (64 hex digits).
    pub sha256: String,
}

/// What an exported model is: written as `card.json`, rendered as `card.md`, and embedded in
/// the safetensors metadata under [`EXPORT_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportCard {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// The trunk and its preprocessing.
    #[serde(flatten)]
    pub trunk: TrunkInfo,
    /// The tasks the source was trained on (its heads, dropped here), with their classes.
    pub tasks: Vec<HeadSpec>,
    /// Floating type of the tensors (f16: the convolution kernels but the stem's; see
    /// [`crate::export::stays_f32`]).
    pub dtype: ExportDtype,
    /// BatchNorm folded away (always true for files written here).
    pub folded: bool,
    /// How the tensors are named ([`TENSOR_NAMES`]).
    pub tensor_names: String,
    /// Number of tensors in the file.
    pub tensors: usize,
    /// Number of scalar values in them.
    pub parameters: usize,
    /// Where the weights came from.
    pub source: SourceInfo,
    /// mtpath version that wrote the export.
    pub mtpath_version: String,
}

impl ExportCard {
    /// The [`ModelMetadata`] this card implies (no heads, no classifier).
    pub fn model_metadata(&self) -> ModelMetadata {
        ModelMetadata {
            trunk: self.trunk.clone(),
            classifier: None,
            heads: Vec::new(),
            mtpath_version: self.mtpath_version.clone(),
        }
    }

    /// The card as pretty JSON (`card.json`).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| Error::invalid(format!("cannot serialise the export card: {e}")))
    }
}

/// The trunk fields read through the record that embeds them (`meta.input_size`), as they
/// read in the JSON.
impl std::ops::Deref for ModelMetadata {
    type Target = TrunkInfo;
    fn deref(&self) -> &TrunkInfo {
        &self.trunk
    }
}

impl std::ops::DerefMut for ModelMetadata {
    fn deref_mut(&mut self) -> &mut TrunkInfo {
        &mut self.trunk
    }
}

impl std::ops::Deref for ExportCard {
    type Target = TrunkInfo;
    fn deref(&self) -> &TrunkInfo {
        &self.trunk
    }
}

/// The [`ExportCard`] of a file, when it carries one.
pub fn export_card(file: &TensorFile) -> Result<Option<ExportCard>> {
    match file.metadata.get(EXPORT_KEY) {
        None => Ok(None),
        Some(s) => serde_json::from_str(s)
            .map(Some)
            .map_err(|e| Error::BadWeights {
                path: file.source.clone(),
                message: format!("metadata `{EXPORT_KEY}` is not a valid mtpath export card: {e}"),
            }),
    }
}

/// Whether a file holds a folded (exported) trunk: its card says so, or, without a card, the
/// stem convolution has a bias (no trained ResNet or DenseNet has one).
pub fn is_folded(file: &TensorFile) -> Result<bool> {
    if let Some(card) = export_card(file)? {
        return Ok(card.folded);
    }
    Ok(file
        .names()
        .map(normalize_name)
        .any(|n| n == "conv1.bias" || n == "features.conv0.bias"))
}

/// The architecture of a file's weights: what its metadata says (an override that disagrees
/// is an error naming the file), else `arch`, else inferred from the tensor names.
pub fn resolve_arch(file: &TensorFile, arch: Option<Arch>) -> Result<Arch> {
    let said = match file.model_card()? {
        Some(card) => Some(card.trunk.architecture),
        None => export_card(file)?.map(|c| c.trunk.architecture),
    };
    match (said, arch) {
        (Some(c), Some(a)) if c != a => Err(Error::WeightsMismatch {
            path: file.source.clone(),
            message: format!("the file says it holds {c} weights, but {a} was asked for"),
        }),
        (Some(c), _) => Ok(c),
        (None, Some(a)) => Ok(a),
        (None, None) => file.arch(),
    }
}

/// The preprocessing metadata of a file: its [`ModelMetadata`], else its export card's, else
/// ImageNet's defaults for `arch`.
pub fn file_metadata(file: &TensorFile, arch: Arch) -> Result<ModelMetadata> {
    if let Some(m) = file.model_card()? {
        return Ok(m);
    }
    Ok(match export_card(file)? {
        Some(card) => card.model_metadata(),
        None => ModelMetadata::imagenet(&NetworkSpec::trunk(arch)),
    })
}
