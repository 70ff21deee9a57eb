//! Feature extraction: weights + images → global-average-pooled trunk features.
//!
//! One code path for the `mtpath features` command and the browser: both decode and
//! preprocess with [`crate::preprocess`] and run the trunk in evaluation mode. Exported web
//! models (BatchNorm folded, see [`crate::export`]) load transparently and run the
//! inference-only [`FoldedNet`].

use candle_core::{Device, Tensor};

use crate::export::{self, ExportCard, FoldedNet};
use crate::network::Network;
use crate::preprocess::{preprocess_bytes, PreprocessConfig};
use crate::weights::{read_safetensors_bytes, ModelMetadata, TensorFile};
use crate::{Arch, Error, NetworkSpec, Result};

/// The network features come from.
#[derive(Debug)]
enum Trunk {
    /// The training network (BatchNorm in evaluation mode); boxed, it is the larger.
    Trained(Box<Network>),
    /// An exported, BatchNorm-folded trunk.
    Folded(FoldedNet),
}

/// A loaded model ready to embed images.
#[derive(Debug)]
pub struct FeatureExtractor {
    trunk: Trunk,
    meta: ModelMetadata,
    export: Option<ExportCard>,
    preprocess: PreprocessConfig,
}

impl FeatureExtractor {
    /// Build from a tensor file. The architecture comes from mtpath metadata, else from
    /// `arch`, else is inferred from the tensor names. Only trunk tensors are required;
    /// classifier and head tensors in the file are ignored. An exported (folded) file, f32 or
    /// f16, builds the inference-only [`FoldedNet`].
    pub fn from_tensor_file(
        file: &TensorFile,
        arch: Option<Arch>,
        device: &Device,
    ) -> Result<Self> {
        let arch = export::resolve_arch(file, arch)?;
        let mut meta = export::file_metadata(file, arch)?;
        meta.classifier = None;
        meta.heads.clear();
        let export = export::export_card(file)?;
        let trunk = if export::is_folded(file)? {
            Trunk::Folded(FoldedNet::load(file, arch, device)?)
        } else {
            Trunk::Trained(Box::new(Self::trained(file, arch, device)?))
        };
        let preprocess = PreprocessConfig {
            resize_shorter: meta.resize_shorter,
            crop: meta.input_size,
            mean: meta.mean,
            std: meta.std,
        };
        preprocess.validate()?;
        Ok(Self {
            trunk,
            meta,
            export,
            preprocess,
        })
    }

    fn trained(file: &TensorFile, arch: Arch, device: &Device) -> Result<Network> {
        let net = Network::new(NetworkSpec::trunk(arch), device, 0)?;
        let report = net.load_weights(file, crate::weights::LoadMode::Partial)?;
        let missing: Vec<&String> = report
            .missing
            .iter()
            .filter(|n| !n.ends_with("num_batches_tracked"))
            .collect();
        if !missing.is_empty() {
            return Err(Error::WeightsMismatch {
                path: file.source.clone(),
                message: format!(
                    "{} trunk tensor(s) missing for {arch}, e.g. `{}`: not {arch} weights?",
                    missing.len(),
                    missing[0]
                ),
            });
        }
        Ok(net)
    }

    /// Build from safetensors bytes (the browser's path); `source` names them in errors.
    pub fn from_safetensors_bytes(bytes: &[u8], source: &str, device: &Device) -> Result<Self> {
        let file = read_safetensors_bytes(bytes, source, device)?;
        Self::from_tensor_file(&file, None, device)
    }

    /// The model's metadata (architecture, input size, normalisation).
    pub fn metadata(&self) -> &ModelMetadata {
        &self.meta
    }

    /// The preprocessing applied to every image.
    pub fn preprocess_config(&self) -> &PreprocessConfig {
        &self.preprocess
    }

    /// Override the preprocessing sizes (e.g. `--size`); normalisation stays the model's.
    pub fn set_sizes(&mut self, resize_shorter: u32, crop: u32) -> Result<()> {
        let cfg = PreprocessConfig {
            resize_shorter,
            crop,
            ..self.preprocess
        };
        cfg.validate()?;
        self.preprocess = cfg;
        Ok(())
    }

    /// Length of each feature vector.
    pub fn feature_dim(&self) -> usize {
        self.meta.architecture.feature_dim()
    }

    /// The training network, unless the model is an exported (folded) one.
    pub fn network(&self) -> Option<&Network> {
        match &self.trunk {
            Trunk::Trained(n) => Some(n),
            Trunk::Folded(_) => None,
        }
    }

    /// Whether the model is an exported trunk with BatchNorm folded away.
    pub fn is_folded(&self) -> bool {
        matches!(self.trunk, Trunk::Folded(_))
    }

    /// The export card of an exported model (dtype, source, tasks and classes).
    pub fn export_card(&self) -> Option<&ExportCard> {
        self.export.as_ref()
    }

    fn device(&self) -> &Device {
        match &self.trunk {
            Trunk::Trained(n) => n.device(),
            Trunk::Folded(f) => f.device(),
        }
    }

    /// Features [N, F] of a normalised NCHW batch.
    pub fn features_t(&self, xs: &Tensor) -> Result<Tensor> {
        match &self.trunk {
            Trunk::Trained(n) => n.features_t(xs, false),
            Trunk::Folded(f) => f.features(xs),
        }
    }

    /// Features of already preprocessed images (each `3·crop·crop` floats, CHW), as rows.
    pub fn extract_preprocessed(&self, images: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let side = self.preprocess.crop as usize;
        let want = 3 * side * side;
        if let Some(bad) = images.iter().position(|v| v.len() != want) {
            return Err(Error::invalid(format!(
                "image {bad}: {} values, expected 3x{side}x{side}",
                images[bad].len()
            )));
        }
        let flat: Vec<f32> = images.iter().flatten().copied().collect();
        let x = Tensor::from_vec(flat, (images.len(), 3, side, side), self.device())?;
        Ok(self.features_t(&x)?.to_vec2::<f32>()?)
    }

    /// Features of one encoded image (JPEG/PNG/TIFF bytes).
    pub fn extract_bytes(&self, bytes: &[u8]) -> Result<Vec<f32>> {
        let x = preprocess_bytes(bytes, &self.preprocess)?;
        Ok(self.extract_preprocessed(&[x])?.pop().unwrap_or_default())
    }
}
