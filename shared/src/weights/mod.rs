//! Reading and writing weights: safetensors (f32/f16/bf16), PyTorch `.pth` zip archives,
//! torchvision/timm names, strict and partial loads, and mtpath's metadata.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{safetensors::Load, DType, Device, Tensor};

use crate::backbone::Arch;
use crate::network::{Network, NetworkSpec};
use crate::varstore::TensorKind;
use crate::{Error, Result};

mod metadata;

pub use metadata::{
    export_card, file_metadata, is_folded, resolve_arch, ExportCard, ExportDtype, ModelMetadata,
    SourceInfo, TrunkInfo, EXPORT_KEY, FORMAT, FORMAT_VERSION, METADATA_KEY, TENSOR_NAMES,
};

/// Named tensors read from a file, in file order, with the file's string metadata.
#[derive(Debug, Clone)]
pub struct TensorFile {
    /// `(name, tensor)`: floating tensors converted to f32, integer ones kept.
    pub tensors: Vec<(String, Tensor)>,
    /// safetensors `__metadata__` (empty for `.pth`).
    pub metadata: BTreeMap<String, String>,
    /// Where the tensors came from, for messages.
    pub source: String,
}

impl TensorFile {
    /// Tensor names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.iter().map(|(n, _)| n.as_str())
    }

    /// The tensor of that name.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// mtpath's model description, when the file carries it.
    pub fn model_card(&self) -> Result<Option<ModelMetadata>> {
        match self.metadata.get(METADATA_KEY) {
            None => Ok(None),
            Some(s) => serde_json::from_str(s)
                .map(Some)
                .map_err(|e| Error::BadWeights {
                    path: self.source.clone(),
                    message: format!("metadata `{METADATA_KEY}` is not valid mtpath metadata: {e}"),
                }),
        }
    }

    /// The architecture: from mtpath metadata if present, else inferred from the names.
    pub fn arch(&self) -> Result<Arch> {
        if let Some(card) = self.model_card()? {
            return Ok(card.trunk.architecture);
        }
        Arch::infer_from_keys(
            self.names()
                .map(normalize_name)
                .collect::<Vec<_>>()
                .iter()
                .map(|s| s.as_str()),
        )
        .ok_or_else(|| Error::BadWeights {
            path: self.source.clone(),
            message: "cannot tell the architecture: no mtpath metadata and the tensor names \
                          match none of resnet18/34/50/101, densenet121/169 (torchvision naming); \
                          pass the architecture explicitly (--arch)"
                .into(),
        })
    }
}

fn bad(source: &str, message: impl Into<String>) -> Error {
    Error::BadWeights {
        path: source.to_string(),
        message: message.into(),
    }
}

/// Count the NaN and infinite values of a little-endian float tensor's raw bytes, and give
/// the first one's index. Integer dtypes have none. Working on the bytes checks weights
/// before they are copied anywhere, on every device, for the cost of one read.
fn non_finite(dtype: safetensors::Dtype, bytes: &[u8]) -> Option<(usize, usize)> {
    use safetensors::Dtype as D;
    let (width, is_bad): (usize, fn(&[u8]) -> bool) = match dtype {
        // A float is NaN or infinite when its exponent bits are all ones.
        D::F64 => (8, |b| {
            u64::from_le_bytes(b.try_into().unwrap_or([0; 8])) & 0x7ff0_0000_0000_0000
                == 0x7ff0_0000_0000_0000
        }),
        D::F32 => (4, |b| {
            u32::from_le_bytes(b.try_into().unwrap_or([0; 4])) & 0x7f80_0000 == 0x7f80_0000
        }),
        D::F16 => (2, |b| u16::from_le_bytes([b[0], b[1]]) & 0x7c00 == 0x7c00),
        D::BF16 => (2, |b| u16::from_le_bytes([b[0], b[1]]) & 0x7f80 == 0x7f80),
        _ => return None,
    };
    let mut first = None;
    let mut count = 0;
    for (i, v) in bytes.chunks_exact(width).enumerate() {
        if is_bad(v) {
            count += 1;
            first.get_or_insert(i);
        }
    }
    first.map(|f| (count, f))
}

/// Refuse a tensor holding NaN or infinite values, naming it: such weights give chance-level
/// features without any other sign.
fn check_finite(source: &str, name: &str, dtype: safetensors::Dtype, bytes: &[u8]) -> Result<()> {
    match non_finite(dtype, bytes) {
        None => Ok(()),
        Some((count, first)) => Err(bad(
            source,
            format!(
                "tensor `{name}` holds {count} NaN or infinite value(s) (the first at flat index \
                 {first}); the file is damaged or was saved from a diverged training run; use \
                 an earlier checkpoint"
            ),
        )),
    }
}

fn to_f32_if_float(t: Tensor) -> Result<Tensor> {
    Ok(match t.dtype() {
        DType::F16 | DType::BF16 | DType::F64 => t.to_dtype(DType::F32)?,
        _ => t,
    })
}

/// Parse safetensors bytes; `source` names them in errors.
pub fn read_safetensors_bytes(bytes: &[u8], source: &str, device: &Device) -> Result<TensorFile> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| {
        bad(
            source,
            format!(
                "not a readable safetensors file ({e}); it may be truncated or of another format"
            ),
        )
    })?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| bad(source, format!("corrupt safetensors file: {e}")))?;
    let mut names: Vec<(usize, String)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| (view.data().as_ptr() as usize, name))
        .collect();
    // File order (by data offset) is the writer's order: torchvision's state-dict order.
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for (_, name) in names {
        let view = st
            .tensor(&name)
            .map_err(|e| bad(source, format!("tensor `{name}`: {e}")))?;
        check_finite(source, &name, view.dtype(), view.data())?;
        let t = view
            .load(device)
            .map_err(|e| bad(source, format!("tensor `{name}` ({:?}): {e}", view.dtype())))?;
        tensors.push((name, to_f32_if_float(t)?));
    }
    let metadata = meta
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    Ok(TensorFile {
        tensors,
        metadata,
        source: source.to_string(),
    })
}

/// Read a weights file: safetensors, or a PyTorch `.pth`/`.pt` zip archive holding a state
/// dict (directly or under `state_dict`, `model` or `model_state_dict`).
pub fn read_weights_file(path: &Path, device: &Device) -> Result<TensorFile> {
    let source = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::Io {
        path: path.to_path_buf(),
        error: e,
    })?;
    if bytes.is_empty() {
        return Err(bad(&source, "the file is empty"));
    }
    if bytes.starts_with(b"PK") {
        drop(bytes);
        return read_pth(path, device);
    }
    if bytes.len() >= 9 && bytes[8] == b'{' {
        return read_safetensors_bytes(&bytes, &source, device);
    }
    if bytes.starts_with(&[0x80]) {
        return Err(bad(
            &source,
            "legacy (pre-1.6, non-zip) PyTorch file; re-save it with torch.save(state_dict, path) \
             in a recent PyTorch, or convert it to safetensors",
        ));
    }
    Err(bad(
        &source,
        "neither a safetensors file nor a PyTorch zip archive (.pth); it may be truncated",
    ))
}

fn read_pth(path: &Path, device: &Device) -> Result<TensorFile> {
    let source = path.display().to_string();
    let mut last_err = None;
    for key in [
        None,
        Some("state_dict"),
        Some("model"),
        Some("model_state_dict"),
    ] {
        match candle_core::pickle::read_all_with_key(path, key) {
            Ok(t) if !t.is_empty() => {
                let mut tensors = Vec::with_capacity(t.len());
                for (name, tensor) in t {
                    check_finite_tensor(&source, &name, &tensor)?;
                    tensors.push((name, to_f32_if_float(tensor.to_device(device)?)?));
                }
                // The pickle reader does not keep order; sort for determinism.
                tensors.sort_by(|a, b| a.0.cmp(&b.0));
                return Ok(TensorFile {
                    tensors,
                    metadata: BTreeMap::new(),
                    source,
                });
            }
            Ok(_) => {}
            Err(e) => last_err = Some(e.to_string()),
        }
    }
    Err(bad(
        &source,
        match last_err {
            Some(e) => format!("cannot read this PyTorch archive ({e}); it may be truncated"),
            None => "this PyTorch archive holds no state dict of tensors".to_string(),
        },
    ))
}

/// [`check_finite`] for a tensor already read (PyTorch archives): floating tensors are
/// widened to f32 on the host and their bytes checked.
fn check_finite_tensor(source: &str, name: &str, t: &Tensor) -> Result<()> {
    if !t.dtype().is_float() {
        return Ok(());
    }
    let values = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    check_finite(source, name, safetensors::Dtype::F32, &bytes)
}

/// Map torchvision/timm/DataParallel spellings to mtpath's (torchvision's current) names:
/// drops `module.`, `trunk.`, `backbone.` and `model.` prefixes, and renames old DenseNet
/// keys such as `denselayer1.norm.1.weight` to `denselayer1.norm1.weight`.
pub fn normalize_name(name: &str) -> String {
    let mut n = name;
    loop {
        let stripped = ["module.", "trunk.", "backbone.", "model."]
            .iter()
            .find_map(|p| n.strip_prefix(p));
        match stripped {
            Some(s) => n = s,
            None => break,
        }
    }
    if n.contains(".denselayer") {
        let mut out = n.to_string();
        for part in ["norm", "relu", "conv"] {
            for i in ["1", "2"] {
                out = out.replace(&format!(".{part}.{i}."), &format!(".{part}{i}."));
            }
        }
        return out;
    }
    n.to_string()
}

/// Whether a load must account for every tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadMode {
    /// Every model tensor must be present (except `num_batches_tracked`) and nothing else.
    Strict,
    /// Load what matches (e.g. a trunk into a model with new heads); report the rest.
    Partial,
}

/// What a load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Model tensors that received a value.
    pub loaded: Vec<String>,
    /// Model tensors the file lacked (they keep their initialisation).
    pub missing: Vec<String>,
    /// File tensors the model has no place for.
    pub unexpected: Vec<String>,
}

fn list(names: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" … and {} more", names.len() - SHOWN));
    }
    s
}

impl Network {
    /// Copy tensors from `file` into the model by (normalised) name.
    ///
    /// Shapes must agree exactly; a mismatch is an error that names the tensor and suggests the
    /// architecture the file looks like. In [`LoadMode::Strict`], missing (other than
    /// `num_batches_tracked`) or unexpected tensors are an error listing them by name.
    pub fn load_weights(&self, file: &TensorFile, mode: LoadMode) -> Result<LoadReport> {
        let mut by_name: HashMap<String, &Tensor> = HashMap::new();
        let mut unexpected = Vec::new();
        for (raw, t) in &file.tensors {
            let name = normalize_name(raw);
            if self.store().get(&name).is_some() {
                by_name.insert(name, t);
            } else {
                unexpected.push(raw.clone());
            }
        }
        let looks_like = file
            .arch()
            .ok()
            .filter(|a| *a != self.arch())
            .map(|a| format!(" (the file looks like {a}, the model is {})", self.arch()))
            .unwrap_or_default();
        let mut report = LoadReport::default();
        for entry in self.store().entries() {
            let Some(src) = by_name.get(&entry.name) else {
                report.missing.push(entry.name.clone());
                continue;
            };
            if src.dims() != entry.var.dims() {
                return Err(Error::WeightsMismatch {
                    path: file.source.clone(),
                    message: format!(
                        "tensor `{}` has shape {:?} in the file but {:?} in {}{looks_like}",
                        entry.name,
                        src.dims(),
                        entry.var.dims(),
                        self.arch()
                    ),
                });
            }
            let value = src.to_dtype(entry.var.dtype())?.to_device(self.device())?;
            entry.var.set(&value)?;
            report.loaded.push(entry.name.clone());
        }
        if mode == LoadMode::Strict {
            let missing: Vec<String> = report
                .missing
                .iter()
                .filter(|n| !n.ends_with("num_batches_tracked"))
                .cloned()
                .collect();
            if !missing.is_empty() || !unexpected.is_empty() {
                let mut msg = format!("strict load into {} failed{looks_like}:", self.arch());
                if !missing.is_empty() {
                    msg.push_str(&format!(
                        " missing {} tensor(s): {};",
                        missing.len(),
                        list(&missing)
                    ));
                }
                if !unexpected.is_empty() {
                    msg.push_str(&format!(
                        " unexpected {} tensor(s): {};",
                        unexpected.len(),
                        list(&unexpected)
                    ));
                }
                msg.push_str(" load in partial mode to keep what matches");
                return Err(Error::WeightsMismatch {
                    path: file.source.clone(),
                    message: msg,
                });
            }
        }
        report.unexpected = unexpected;
        Ok(report)
    }

    /// Serialise every tensor (parameters as f32, buffers as stored) under torchvision's names
    /// with `metadata` as JSON under [`METADATA_KEY`].
    pub fn to_safetensors_bytes(&self, metadata: &ModelMetadata) -> Result<Vec<u8>> {
        self.serialize_where(metadata, |_| true)
    }

    /// The trunk alone (no classifier, no heads) under torchvision's names, so that
    /// `torchvision.models.<arch>().load_state_dict(state, strict=False)` takes every tensor
    /// and reports only the classifier as missing. The metadata records no heads.
    pub fn trunk_safetensors_bytes(&self, metadata: &ModelMetadata) -> Result<Vec<u8>> {
        let meta = ModelMetadata {
            heads: Vec::new(),
            classifier: None,
            ..metadata.clone()
        };
        self.serialize_where(&meta, |name| self.is_trunk_name(name))
    }

    fn serialize_where(
        &self,
        metadata: &ModelMetadata,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<u8>> {
        let mut info = HashMap::new();
        info.insert(
            METADATA_KEY.to_string(),
            serde_json::to_string(metadata).map_err(|e| Error::invalid(e.to_string()))?,
        );
        info.insert("format".to_string(), "pt".to_string());
        let tensors: Vec<(String, Tensor)> = self
            .store()
            .entries()
            .iter()
            .filter(|e| keep(&e.name))
            .map(|e| {
                let t = e.var.as_tensor().to_device(&Device::Cpu)?.contiguous()?;
                Ok((e.name.clone(), t))
            })
            .collect::<Result<_>>()?;
        let bytes = safetensors::serialize(tensors, Some(info))
            .map_err(|e| Error::invalid(e.to_string()))?;
        Ok(with_sorted_header(bytes))
    }

    /// Write [`Network::to_safetensors_bytes`] to `path` atomically (temporary file, then rename).
    pub fn save_safetensors(&self, path: &Path, metadata: &ModelMetadata) -> Result<()> {
        let bytes = self.to_safetensors_bytes(metadata)?;
        crate::fsutil::write_atomic(path, &bytes)
    }

    /// Build the network described by a file's metadata (or the architecture inferred from its
    /// names, with the classifier if present) and load it strictly.
    pub fn from_tensor_file(file: &TensorFile, device: &Device) -> Result<(Self, ModelMetadata)> {
        let meta = match file.model_card()? {
            Some(m) => m,
            None => {
                let arch = file.arch()?;
                let cls = format!("{}.weight", arch.classifier_name());
                let classifier = file
                    .tensors
                    .iter()
                    .find(|(n, _)| normalize_name(n) == cls)
                    .map(|(_, t)| t.dims()[0]);
                let spec = NetworkSpec {
                    arch,
                    classifier,
                    heads: Vec::new(),
                };
                ModelMetadata::imagenet(&spec)
            }
        };
        let net = Network::new(meta.spec(), device, 0)?;
        net.load_weights(file, LoadMode::Strict)?;
        Ok((net, meta))
    }

    /// Parameters only (no buffers), in state-dict order.
    pub fn named_parameters(&self) -> Vec<(String, candle_core::Var)> {
        self.store()
            .entries()
            .iter()
            .filter(|e| e.kind == TensorKind::Parameter)
            .map(|e| (e.name.clone(), e.var.clone()))
            .collect()
    }
}

/// `bytes` (a safetensors file) with its JSON header's keys in sorted order. The safetensors
/// crate writes its metadata from a `HashMap`, whose order changes from one process to the
/// next, so the same weights would get a different file (and SHA-256, which probes record as
/// their model's identity) each time. Reordering keeps the header's length; the padding
/// spaces that align the data are kept.
fn with_sorted_header(mut bytes: Vec<u8>) -> Vec<u8> {
    let Some(len) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    else {
        return bytes;
    };
    let Some(end) = usize::try_from(len).ok().and_then(|l| l.checked_add(8)) else {
        return bytes;
    };
    let Some(header) = bytes.get(8..end) else {
        return bytes;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(header) else {
        return bytes;
    };
    // serde_json's map is a BTreeMap here (no preserve_order feature): keys come out sorted.
    let Ok(sorted) = serde_json::to_vec(&value) else {
        return bytes;
    };
    if sorted.len() > header.len() {
        return bytes;
    }
    let mut padded = sorted;
    padded.resize(header.len(), b' ');
    bytes[8..end].copy_from_slice(&padded);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;

    #[test]
    fn the_same_weights_always_serialise_to_the_same_bytes() {
        let spec = NetworkSpec::trunk(Arch::ResNet18);
        let net = Network::new(spec.clone(), &Device::Cpu, 0).unwrap();
        let meta = ModelMetadata::imagenet(&spec);
        let first = net.to_safetensors_bytes(&meta).unwrap();
        // Each serialisation's metadata map has its own hash order.
        for _ in 0..6 {
            assert!(net.to_safetensors_bytes(&meta).unwrap() == first);
        }
        let read = read_safetensors_bytes(&first, "x", &Device::Cpu).unwrap();
        assert_eq!(read.metadata.get("format").map(String::as_str), Some("pt"));
    }

    fn file_with(dtype: Dtype, values: &[u8]) -> Vec<u8> {
        let width = match dtype {
            Dtype::F64 => 8,
            Dtype::F32 => 4,
            _ => 2,
        };
        let good = vec![0u8; values.len()];
        let views = vec![
            (
                "conv1.weight",
                TensorView::new(dtype, vec![values.len() / width], &good).unwrap(),
            ),
            (
                "fc.bias",
                TensorView::new(dtype, vec![values.len() / width], values).unwrap(),
            ),
        ];
        safetensors::serialize(views, None).unwrap()
    }

    #[test]
    fn non_finite_weights_are_refused_with_the_tensor_named() {
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let cases: Vec<(Dtype, Vec<u8>)> = vec![
            (Dtype::F32, f32s(&[1.0, f32::NAN, 2.0])),
            (Dtype::F32, f32s(&[f32::NEG_INFINITY, 0.5])),
            (Dtype::F64, f64::INFINITY.to_le_bytes().to_vec()),
            // f16 NaN 0x7e00 and bf16 +inf 0x7f80, little-endian.
            (Dtype::F16, vec![0x00, 0x3c, 0x00, 0x7e]),
            (Dtype::BF16, vec![0x80, 0x7f, 0x80, 0x3f]),
        ];
        for (dtype, bytes) in cases {
            let err =
                read_safetensors_bytes(&file_with(dtype, &bytes), "w.safetensors", &Device::Cpu)
                    .unwrap_err()
                    .to_string();
            assert!(
                err.contains("`fc.bias`") && err.contains("NaN or infinite"),
                "{dtype:?}: {err}"
            );
            assert!(err.contains("w.safetensors"), "{err}");
        }
    }

    #[test]
    fn finite_extremes_are_accepted() {
        let bytes: Vec<u8> = [f32::MAX, f32::MIN_POSITIVE, -0.0, 1e-45]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let file =
            read_safetensors_bytes(&file_with(Dtype::F32, &bytes), "w", &Device::Cpu).unwrap();
        assert_eq!(file.tensors.len(), 2);
        // f16 65504 (0x7bff) is the largest finite half.
        let half = read_safetensors_bytes(&file_with(Dtype::F16, &[0xff, 0x7b]), "w", &Device::Cpu);
        assert!(half.is_ok());
    }
}
