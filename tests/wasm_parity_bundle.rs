//! Writes the bundle the browser tests compare against: the fixture ResNet-18's bytes, real
//! tiles from `../shared/data` in several formats, and their features computed natively.
//!
//! Usage: `make-wasm-parity-bundle OUT.safetensors`

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use mtpath_shared::inference::FeatureExtractor;
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

/// A deterministic 3-class problem (60 × 16, groups of 3 rows) with its native solution:
/// `probe.x`, `probe.y`, `probe.group`, `probe.best_c`, `probe.cv_bacc`, `probe.proba`
/// (at the chosen C) and `pca.xy` (the 2-D PCA map), so the browser tests can check that
/// the wasm build chooses and fits the same probe and draws the same map.
fn probe_problem() -> Result<Vec<(String, Tensor)>, Box<dyn std::error::Error>> {
    use mtpath_shared::probe::{fit_linear, grid_search_c, GridConfig, ModelKind};
    let (n, d, k) = (60usize, 16usize, 3usize);
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let y: Vec<u32> = (0..n).map(|i| (i % k) as u32).collect();
    let x: Vec<f32> = (0..n * d)
        .map(|j| {
            let (i, c) = (j / d, j % d);
            let centre = if c % k == y[i] as usize { 0.8 } else { 0.0 };
            centre + 1.5 * uniform()
        })
        .collect();
    let group: Vec<i64> = (0..n as i64).map(|i| i / 3).collect();
    let groups: Vec<String> = group.iter().map(|g| format!("g{g}")).collect();
    let cv = grid_search_c(&x, n, d, &y, k, &groups, &GridConfig::default())?;
    let model = fit_linear(ModelKind::Logistic, cv.best_c, &x, n, d, &y, k)?;
    let proba = model.predict_proba(&x, n)?;
    let pca = mtpath_shared::embed::pca_2d(&x, n, d)?;
    let cpu = &Device::Cpu;
    let best = cv
        .scores
        .iter()
        .find(|s| s.c == cv.best_c)
        .map(|s| s.balanced_accuracy);
    Ok(vec![
        ("probe.x".into(), Tensor::from_vec(x, (n, d), cpu)?),
        (
            "probe.y".into(),
            Tensor::from_vec(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), n, cpu)?,
        ),
        ("probe.group".into(), Tensor::from_vec(group, n, cpu)?),
        (
            "probe.best_c".into(),
            Tensor::from_vec(vec![cv.best_c], 1, cpu)?,
        ),
        (
            "probe.cv_bacc".into(),
            Tensor::from_vec(vec![best.unwrap_or(f64::NAN)], 1, cpu)?,
        ),
        ("probe.proba".into(), Tensor::from_vec(proba, (n, k), cpu)?),
        (
            "pca.xy".into(),
            Tensor::from_vec(pca.embedding, (n, 2), cpu)?,
        ),
    ])
}

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
    tensors.extend(probe_problem()?);
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
