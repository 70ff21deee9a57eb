//! Writing the web model: a trunk with BatchNorm folded away, in f32 or f16, with its model
//! card. The records it writes and their readers live in [`crate::weights`].
//!
//! [`export`] turns any weights mtpath reads (a training checkpoint, `trunk.safetensors`, a
//! torchvision state dict, or an earlier export) into an inference-only safetensors file:
//! BatchNorm is folded into the preceding convolutions where the maths allows it and turned
//! into a per-channel affine elsewhere ([`FoldedNet`] documents both and the tensor names), and
//! classifiers and task heads are dropped (the browser explorer uses features only; the task
//! and class names stay in the card).
//!
//! The file's safetensors metadata holds two JSON documents:
//! - [`METADATA_KEY`] (`mtpath`): the usual [`ModelMetadata`] (architecture, preprocessing;
//!   no heads), so every reader of mtpath files finds the architecture and preprocessing;
//! - [`EXPORT_KEY`] (`mtpath_export`): the [`ExportCard`], whose `folded: true` tells
//!   [`crate::inference::FeatureExtractor`] to build the inference-only [`FoldedNet`] instead
//!   of the training network. f16 tensors are widened to f32 when read.

mod sha256;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;

pub use sha256::{sha256, sha256_hex};

use crate::inference::FoldedNet;
use crate::weights::{
    export_card, file_metadata, is_folded, resolve_arch, ExportCard, ExportDtype, ModelMetadata,
    SourceInfo, TensorFile, TrunkInfo, EXPORT_KEY, FORMAT, FORMAT_VERSION, METADATA_KEY,
    TENSOR_NAMES,
};
use crate::{Arch, Error, Result};

/// Card rendering (the writer's `card.md`).
impl ExportCard {
    /// The card as Markdown (`card.md`).
    pub fn to_markdown(&self) -> String {
        let mut s = format!(
            "# mtpath web model: {} ({}, BatchNorm folded)\n\n",
            self.trunk.architecture, self.dtype
        );
        s.push_str(&format!(
            "- Architecture: {} trunk, {}-d features (global average pool of the last feature \
             map{}).\n",
            self.trunk.architecture,
            self.trunk.feature_dim,
            if self.trunk.architecture.classifier_name() == "classifier" {
                ", after the final ReLU"
            } else {
                ""
            }
        ));
        s.push_str(&format!(
            "- Input: shorter side resized to {0} px, centre crop {1}×{1} px, RGB scaled to 0–1 \
             and normalised with mean {2:?} and std {3:?}.\n",
            self.trunk.resize_shorter, self.trunk.input_size, self.trunk.mean, self.trunk.std
        ));
        s.push_str(&format!(
            "- Weights: `model.safetensors`, {} tensors, {} values, dtype {}{}; folded: {} \
             (inference only: no BatchNorm statistics, no classifier, no task heads).\n",
            self.tensors,
            self.parameters,
            self.dtype,
            if self.dtype == ExportDtype::F16 {
                " (the stem kernel and the per-channel vectors in f32)"
            } else {
                ""
            },
            self.folded
        ));
        s.push_str(&format!(
            "- Source: `{}` (sha256 `{}`).\n",
            self.source.file, self.source.sha256
        ));
        s.push_str(&format!(
            "- Written by mtpath {} (format `{}` version {}).\n",
            self.mtpath_version, self.format, self.format_version
        ));
        s.push_str(
            "\nLoad it with the browser explorer, `mtpath features --weights model.safetensors`, \
             or `FeatureExtractor::from_safetensors_bytes`; the safetensors metadata carries this \
             card under `mtpath_export`. It does not load into torchvision as is.\n\n## Tensors\n\n",
        );
        s.push_str(&format!("Names follow {TENSOR_NAMES}\n"));
        s.push_str("\n## Tasks\n\n");
        if self.tasks.is_empty() {
            s.push_str("None recorded (the source had no task heads).\n");
        } else {
            s.push_str("| task | classes |\n|---|---|\n");
            for t in &self.tasks {
                s.push_str(&format!("| {} | {} |\n", t.name, t.classes.join(", ")));
            }
        }
        s
    }
}

/// An exported model: the safetensors bytes, their card, and the folded network (f32, before
/// any f16 rounding).
#[derive(Debug)]
pub struct Export {
    /// `model.safetensors`.
    pub model: Vec<u8>,
    /// The card (also inside `model`'s metadata).
    pub card: ExportCard,
    /// The folded trunk the bytes were written from.
    pub net: FoldedNet,
}

/// Whether a tensor is kept in f32 in an f16 export: the per-channel vectors (biases, affine
/// scales and shifts) and the stem's kernel: 0.1% of ResNet-18's values (14 k of 11.2 M),
/// 1.2% of DenseNet-121's (86 k of 7.0 M). Rounding them to f16 too made the features' error
/// on the PyTorch fixtures 3× larger for DenseNet-121 (8.4e-4 → 2.6e-3 relative) and 1.4×
/// for ResNet-18 (5.5e-4 → 7.8e-4), to save 30 KB and 170 KB.
pub fn stays_f32(name: &str, t: &Tensor) -> bool {
    t.rank() == 1 || name == "conv1.weight" || name == "features.conv0.weight"
}

/// Fold `file` (any weights [`crate::inference::FeatureExtractor`] reads, including an earlier
/// export) into the web model: architecture from the file's metadata, else `arch`, else the
/// tensor names; tensors stored as `dtype`. Non-finite values (e.g. f16 overflow) are an error
/// naming the tensor.
pub fn export(
    file: &TensorFile,
    arch: Option<Arch>,
    dtype: ExportDtype,
    source: SourceInfo,
) -> Result<Export> {
    let arch = resolve_arch(file, arch)?;
    let device = Device::Cpu;
    let meta = file_metadata(file, arch)?;
    let (net, tasks) = if is_folded(file)? {
        let tasks = export_card(file)?.map(|c| c.tasks).unwrap_or_default();
        (FoldedNet::load(file, arch, &device)?, tasks)
    } else {
        (FoldedNet::fold(file, arch, &device)?, meta.heads.clone())
    };
    let mut tensors = Vec::new();
    for (name, t) in net.tensors()? {
        let t = if stays_f32(&name, &t) {
            t
        } else {
            t.to_dtype(dtype.dtype())?
        }
        .contiguous()?;
        let values = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(Error::BadWeights {
                path: file.source.clone(),
                message: format!(
                    "tensor `{name}` becomes {bad} when folded and stored as {dtype}{}",
                    if dtype == ExportDtype::F16 {
                        " (beyond f16's range ±65504?); export as f32"
                    } else {
                        ""
                    }
                ),
            });
        }
        tensors.push((name, t));
    }
    let card = ExportCard {
        format: FORMAT.to_string(),
        format_version: FORMAT_VERSION,
        trunk: TrunkInfo {
            architecture: arch,
            feature_dim: arch.feature_dim(),
            ..meta.trunk.clone()
        },
        tasks,
        dtype,
        folded: true,
        tensor_names: TENSOR_NAMES.to_string(),
        tensors: tensors.len(),
        parameters: tensors.iter().map(|(_, t)| t.elem_count()).sum(),
        source,
        mtpath_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let info = HashMap::from([
        (
            METADATA_KEY.to_string(),
            json(&ModelMetadata {
                trunk: card.trunk.clone(),
                classifier: None,
                heads: Vec::new(),
                ..meta
            })?,
        ),
        (EXPORT_KEY.to_string(), json(&card)?),
        ("format".to_string(), "pt".to_string()),
    ]);
    let model = safetensors::serialize(tensors, Some(info))
        .map_err(|e| Error::invalid(format!("cannot serialise the export: {e}")))?;
    Ok(Export { model, card, net })
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::invalid(format!("cannot serialise: {e}")))
}

/// Relative L2 difference `‖a − b‖ / ‖b‖` of two feature sets (row-major), in f64; `b` is the
/// reference. 0 when both are zero.
pub fn relative_difference(a: &[f32], b: &[f32]) -> f64 {
    if a.len() != b.len() {
        return f64::INFINITY;
    }
    let (mut diff, mut norm) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        diff += (f64::from(x) - f64::from(y)).powi(2);
        norm += f64::from(y).powi(2);
    }
    if norm == 0.0 {
        return if diff == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (diff / norm).sqrt()
}

/// A deterministic pseudo-random batch `[n, 3, side, side]` of normalised-looking pixels
/// (roughly −2…2), for checking an export without images.
pub fn probe_batch(n: usize, side: usize, device: &Device) -> Result<Tensor> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let values: Vec<f32> = (0..n * 3 * side * side)
        .map(|_| {
            // xorshift64*: cheap, reproducible, no dependency on rand's stream.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
            (r as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Ok(Tensor::from_vec(values, (n, 3, side, side), device)?)
}
