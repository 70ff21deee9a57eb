//! Writes the bundle the browser tests compare against: the fixture ResNet-18's bytes, real
//! tiles from `../shared/data` in several formats, and their features computed natively.
//!
//! Usage: `make-wasm-parity-bundle OUT.safetensors`

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use mtpath_shared::features::FeatureExtractor;
use mtpath_shared::testdata::{data_dir, fixtures_dir};
use mtpath_shared::weights::read_weights_file;

/// Tiles of five tasks: TIFF, 50 px PNG, and JPEGs of several sizes.
const TILES: &[&str] = &[
    "nct-crc-samples/images/tum/TUM-AACHEHDV.tif",
    "idc-breast/images/idc/10253_idx5_x801_y301_class1.png",
    "lymphoma/images/fl/fl_113.jpg",
    "pbc-blood/images/monocyte/MO_107333.jpg",
    "lbc-pap/images/hsil/HSIL_1__1__0_4446.jpg",
    "tcga-luad-lusc/images/luad/test_0_0_507.jpg",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: make-wasm-parity-bundle OUT.safetensors")?;
    let model_path = fixtures_dir().join("resnet18.safetensors");
    let model_bytes = std::fs::read(&model_path)
        .map_err(|e| format!("{}: {e} (set MTPATH_FIXTURES)", model_path.display()))?;
    let file = read_weights_file(&model_path, &Device::Cpu)?;
    let extractor = FeatureExtractor::from_tensor_file(&file, None, &Device::Cpu)?;
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut rows = Vec::new();
    for (i, rel) in TILES.iter().enumerate() {
        let path = data_dir().join(rel);
        let bytes = std::fs::read(&path)
            .map_err(|e| format!("{}: {e} (set MTPATH_DATA)", path.display()))?;
        rows.push(extractor.extract_bytes(&bytes)?);
        let n = bytes.len();
        tensors.push((
            format!("image.{i}"),
            Tensor::from_vec(bytes, n, &Device::Cpu)?,
        ));
    }
    let dim = extractor.feature_dim();
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    tensors.push((
        "features".into(),
        Tensor::from_vec(flat, (TILES.len(), dim), &Device::Cpu)?,
    ));
    let n = model_bytes.len();
    tensors.push((
        "model".into(),
        Tensor::from_vec(model_bytes, n, &Device::Cpu)?,
    ));
    let meta = HashMap::from([("tiles".to_string(), serde_json::to_string(TILES)?)]);
    let bytes = safetensors::serialize(tensors, Some(meta))?;
    mtpath_shared::fsutil::write_atomic(std::path::Path::new(&out), &bytes)?;
    eprintln!("wrote {out}: {} tiles, {dim}-d features", TILES.len());
    Ok(())
}
