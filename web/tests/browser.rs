//! Browser tests (wasm-bindgen-test in headless Chromium): the wasm build embeds images exactly
//! like the native build.
//!
//! Needs `MTPATH_WASM_PARITY_BUNDLE` at compile time: a safetensors file written natively by
//! `cargo run -p mtpath-integration-tests --bin make-wasm-parity-bundle -- OUT` holding the
//! fixture model's bytes (`model`), real tiles (`image.N`) and their native features
//! (`features`). `scripts/test.sh` does all of this.
#![cfg(target_arch = "wasm32")]

use mtpath_web::{extract_features, FeatureModel};
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const BUNDLE: &[u8] = include_bytes!(env!("MTPATH_WASM_PARITY_BUNDLE"));

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn ok<T>(r: Result<T, wasm_bindgen::JsError>) -> T {
    r.unwrap_or_else(|e| panic!("{:?}", JsValue::from(e)))
}

#[wasm_bindgen_test]
fn browser_features_equal_native_features() {
    let st = safetensors::SafeTensors::deserialize(BUNDLE).expect("bundle");
    let expected = st.tensor("features").expect("features");
    let (n, dim) = (expected.shape()[0], expected.shape()[1]);
    let expected: Vec<f32> = expected
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let model = ok(FeatureModel::new(st.tensor("model").expect("model").data()));
    assert_eq!(model.feature_dim(), dim);
    assert!(n >= 4, "the bundle should hold several real tiles");
    for i in 0..n {
        let image = st.tensor(&format!("image.{i}")).expect("image");
        let ours = ok(model.extract(image.data()));
        let err = rel_l2(&ours, &expected[i * dim..(i + 1) * dim]);
        assert!(err < 1e-5, "image {i}: browser vs native rel L2 {err}");
    }
}

#[wasm_bindgen_test]
fn one_shot_extract_features_and_bad_input_errors() {
    let st = safetensors::SafeTensors::deserialize(BUNDLE).expect("bundle");
    let model = st.tensor("model").expect("model").data();
    let image = st.tensor("image.0").expect("image").data();
    let f = ok(extract_features(model, image));
    assert_eq!(f.len(), 512);
    assert!(extract_features(model, b"not an image").is_err());
    assert!(extract_features(&model[..model.len() / 2], image).is_err());
}
