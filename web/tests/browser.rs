//! Browser tests (wasm-bindgen-test in headless Chromium): the wasm build embeds images exactly
//! like the native build.
//!
//! Needs `MTPATH_WASM_PARITY_BUNDLE` at compile time: a safetensors file written natively by
//! `cargo run -p mtpath-integration-tests --bin make-wasm-parity-bundle -- OUT` holding the
//! fixture model's bytes (`model`), real tiles (`image.N`) and their native features
//! (`features`). `scripts/test.sh` does all of this.
#![cfg(target_arch = "wasm32")]

use mtpath_shared::export::relative_difference;
use mtpath_web::{extract_features, FeatureModel};
use wasm_bindgen::JsValue;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const BUNDLE: &[u8] = include_bytes!(env!("MTPATH_WASM_PARITY_BUNDLE"));

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
        let err = relative_difference(&ours, &expected[i * dim..(i + 1) * dim]);
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

fn f32s(st: &safetensors::SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap_or_else(|_| panic!("{name}"))
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn f64s(st: &safetensors::SafeTensors, name: &str) -> Vec<f64> {
    st.tensor(name)
        .unwrap_or_else(|_| panic!("{name}"))
        .data()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn i64s(st: &safetensors::SafeTensors, name: &str) -> Vec<i64> {
    st.tensor(name)
        .unwrap_or_else(|_| panic!("{name}"))
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

#[wasm_bindgen_test]
fn thumbnail_comes_from_the_same_decode_as_the_features() {
    let st = safetensors::SafeTensors::deserialize(BUNDLE).expect("bundle");
    let model = ok(FeatureModel::new(st.tensor("model").expect("model").data()));
    let image = st.tensor("image.2").expect("image").data();
    let e = ok(model.extract_with_thumbnail(image, 64));
    assert_eq!(e.features(), ok(model.extract(image)));
    assert!(
        e.width().max(e.height()) == 64,
        "{}x{}",
        e.width(),
        e.height()
    );
    assert_eq!(e.thumbnail().len() as u32, e.width() * e.height() * 4);
    assert!(e.source_width() > 64 && e.source_height() > 64);
    assert!(e.thumbnail().chunks_exact(4).all(|p| p[3] == 255));
    assert!(model
        .extract_with_thumbnail(b"\xff\xd8 broken", 64)
        .is_err());
    let card: serde_json::Value = serde_json::from_str(&model.card_json()).unwrap();
    assert_eq!(card["architecture"], "resnet18");
    assert_eq!(card["feature_dim"], 512);
}

#[wasm_bindgen_test]
fn browser_probe_and_map_equal_native() {
    let st = safetensors::SafeTensors::deserialize(BUNDLE).expect("bundle");
    let x = f32s(&st, "probe.x");
    let y: Vec<u32> = i64s(&st, "probe.y").iter().map(|&v| v as u32).collect();
    let groups: Vec<String> = i64s(&st, "probe.group")
        .iter()
        .map(|g| format!("g{g}"))
        .collect();
    let (n, d, k) = (y.len(), x.len() / y.len(), 3);
    let cv: serde_json::Value = serde_json::from_str(&ok(mtpath_web::probe_cross_validate(
        &x,
        n,
        d,
        &y,
        k,
        groups.clone(),
        &[],
        5,
        0,
        "logistic",
    )))
    .unwrap();
    let best_c = f64s(&st, "probe.best_c")[0];
    assert_eq!(cv["best_c"].as_f64().unwrap(), best_c);
    let best = cv["scores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["c"].as_f64() == Some(best_c))
        .unwrap();
    let native_bacc = f64s(&st, "probe.cv_bacc")[0];
    assert!((best["balanced_accuracy"].as_f64().unwrap() - native_bacc).abs() < 1e-12);
    // The out-of-fold confusion matrix counts every sample once.
    let total: u64 = cv["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(total as usize, n);

    let classes = vec!["a".to_string(), "b".to_string(), "c".to_string()];
    let probe = ok(mtpath_web::Probe::new(
        &x, n, d, &y, classes, best_c, "logistic",
    ));
    let proba = ok(probe.scores(&x, n));
    let native = f64s(&st, "probe.proba");
    let worst = proba
        .iter()
        .zip(&native)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(worst < 1e-6, "browser vs native probabilities: {worst}");
    let json = ok(probe.to_json(
        r#"{"architecture":"resnet18","input_size":224,"resize":256}"#,
        None,
        5,
        native_bacc,
        0.9,
        n,
    ));
    let file = mtpath_shared::probe::ProbeFile::from_json(&json, "probe.json").unwrap();
    assert_eq!(file.features.unwrap().architecture, "resnet18");
    assert!(mtpath_web::probe_cross_validate(
        &x,
        n,
        d,
        &y,
        k,
        vec!["one".into(); n],
        &[],
        5,
        0,
        "logistic"
    )
    .is_err());

    let pca = ok(mtpath_web::pca2d(&x, n, d));
    let native_xy = f32s(&st, "pca.xy");
    assert!(relative_difference(&pca[..2 * n], &native_xy) < 1e-4);

    // Neighbours: the most similar row to each row is mostly of its class.
    let nb = ok(mtpath_web::Neighbours::new(&x, n, d));
    let hits = (0..n)
        .filter(|&i| {
            let q = ok(nb.query(i, 1));
            y[q[0] as usize] == y[i]
        })
        .count();
    assert!(hits as f64 / n as f64 > 0.6, "{hits}/{n}");
    let q = ok(nb.query(0, 5));
    assert!(q.chunks(2).all(|p| p[0] as usize != 0) && q[1] >= q[3]);

    // t-SNE runs step by step to its planned end.
    let mut t = ok(mtpath_web::TsneRun::new(&x, n, d, 10.0, 300, 0));
    let first = t.step(50);
    assert_eq!((first.len(), t.iteration()), (2 * n, 50));
    while !t.is_done() {
        t.step(100);
    }
    assert_eq!(t.iteration(), 300);
    assert!(t.step(0).iter().all(|v| v.is_finite()));

    // Features as safetensors, the layout `mtpath features` writes.
    let names: Vec<String> = (0..n).map(|i| format!("tile{i}.png")).collect();
    let bytes = ok(mtpath_web::features_safetensors(
        &x,
        n,
        d,
        names,
        r#"{"architecture":"resnet18"}"#,
    ));
    let back = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(f32s(&back, "features"), x);
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["architecture"], "resnet18");
    assert!(meta["images"].contains("tile59.png"));
}

#[wasm_bindgen_test]
fn eval_transform_is_chosen_in_the_browser() {
    use mtpath_shared::preprocess::{decode_image, preprocess_views, EvalTransform};
    let st = safetensors::SafeTensors::deserialize(BUNDLE).expect("bundle");
    let mut model = ok(FeatureModel::new(st.tensor("model").expect("model").data()));
    let image = st.tensor("image.2").expect("image").data();
    assert_eq!(model.eval_transform(), "resize");
    let resized = ok(model.extract(image));
    ok(model.set_eval_transform("grid"));
    assert_eq!(model.eval_transform(), "grid");
    let grid = ok(model.extract(image));
    assert!(relative_difference(&grid, &resized) > 1e-3);
    // The grid's features are the mean of its views' features.
    let cfg = mtpath_shared::preprocess::PreprocessConfig::imagenet(
        model.resize_shorter(),
        model.input_size(),
    )
    .with_transform(EvalTransform::Grid);
    let views = preprocess_views(&decode_image(image).unwrap(), &cfg).unwrap();
    let mut mean = vec![0f32; grid.len()];
    for v in &views {
        for (m, x) in mean.iter_mut().zip(ok(model.extract_preprocessed(v))) {
            *m += x / views.len() as f32;
        }
    }
    assert!(relative_difference(&grid, &mean) < 1e-5);
    let e = ok(model.extract_with_thumbnail(image, 32));
    assert_eq!(e.features(), grid);
    assert!(model.set_eval_transform("tiles").is_err());
    assert_eq!(model.eval_transform(), "grid");
}
