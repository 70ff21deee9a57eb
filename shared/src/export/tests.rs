//! Folded vs unfolded features, f16 exports, round trips through the feature extractor, and
//! the errors of bad inputs.

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::inference::{FeatureExtractor, FoldedNet};
use crate::weights::read_safetensors_bytes;
use crate::{HeadSpec, Network, NetworkSpec};

/// Relative L2 bound of f32 folded vs unfolded features (measured: 5.6e-7 ResNet-18, 8.8e-7
/// ResNet-50, 3.4e-7 DenseNet-121).
const F32_BOUND: f64 = 1e-5;
/// Relative L2 bound of f16 exports vs the f32 training network (measured: 3.6e-4 ResNet-18,
/// 5.2e-4 ResNet-50, 5.8e-4 DenseNet-121).
const F16_BOUND: f64 = 3e-3;

/// Give every BatchNorm non-trivial statistics and affine parameters (a fresh network has
/// mean 0, var 1, γ 1, β 0, which would make folding look right even if it were wrong).
fn randomise_batchnorm(net: &Network, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for e in net.store().entries() {
        if e.var.rank() != 1 || !net.is_trunk_name(&e.name) {
            continue;
        }
        let (lo, hi) = if e.name.ends_with(".running_var") {
            (0.3, 2.0)
        } else if e.name.ends_with(".running_mean") {
            (-0.3, 0.3)
        } else if e.name.ends_with(".weight") {
            (0.5, 1.5)
        } else {
            (-0.2, 0.2)
        };
        let n = e.var.elem_count();
        let values: Vec<f32> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
        let t = Tensor::from_vec(values, n, &Device::Cpu).unwrap();
        e.var.set(&t).unwrap();
    }
}

fn network(arch: Arch, heads: Vec<HeadSpec>) -> Network {
    let net = Network::new(NetworkSpec::multitask(arch, heads), &Device::Cpu, 7).unwrap();
    randomise_batchnorm(&net, 11);
    net
}

fn heads() -> Vec<HeadSpec> {
    vec![
        HeadSpec {
            name: "lung".into(),
            classes: vec!["aca".into(), "n".into(), "scc".into()],
        },
        HeadSpec {
            name: "breast".into(),
            classes: vec!["idc".into(), "normal".into()],
        },
    ]
}

fn checkpoint(net: &Network, input_size: u32) -> TensorFile {
    let mut meta = ModelMetadata::imagenet(net.spec());
    meta.input_size = input_size;
    meta.resize_shorter = input_size + input_size / 7;
    let bytes = net.to_safetensors_bytes(&meta).unwrap();
    read_safetensors_bytes(&bytes, "run/best/model.safetensors", &Device::Cpu).unwrap()
}

fn source() -> SourceInfo {
    SourceInfo {
        file: "run/best/model.safetensors".into(),
        sha256: sha256_hex(b"checkpoint"),
    }
}

fn features(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Folded (in memory, and exported as f32 and f16 then reloaded by the feature extractor)
/// against the training network in evaluation mode. Returns (f32 in memory, f32 file, f16).
fn agreement(arch: Arch, side: usize) -> (f64, f64, f64) {
    let net = network(arch, heads());
    let x = probe_batch(2, side, &Device::Cpu).unwrap();
    let want = features(&net.features_t(&x, false).unwrap());

    let folded = FoldedNet::from_network(&net).unwrap();
    let in_memory = relative_difference(&features(&folded.features(&x).unwrap()), &want);
    // A single sample takes other kernels (output channels split across threads, kernels
    // packed on the first pass and kept): twice, against the batch's first sample.
    let first = x.narrow(0, 0, 1).unwrap();
    let want_first = &want[..want.len() / 2];
    for pass in 0..2 {
        let one = features(&folded.features(&first).unwrap());
        let rel = relative_difference(&one, want_first);
        assert!(
            rel < F32_BOUND,
            "{arch}: single sample, pass {pass}: {rel:.3e}"
        );
    }

    let file = checkpoint(&net, side as u32);
    let mut rel = Vec::new();
    for dtype in [ExportDtype::F32, ExportDtype::F16] {
        let ex = export(&file, None, dtype, source()).unwrap();
        let fx =
            FeatureExtractor::from_safetensors_bytes(&ex.model, "export", &Device::Cpu).unwrap();
        assert!(fx.is_folded());
        assert!(fx.is_folded());
        assert_eq!(fx.metadata().architecture, arch);
        assert_eq!(fx.feature_dim(), arch.feature_dim());
        assert_eq!(fx.preprocess_config().crop, side as u32);
        let card = fx.export_card().unwrap();
        assert_eq!(card, &ex.card);
        assert_eq!(card.dtype, dtype);
        assert_eq!(card.tasks, heads());
        let got = features(&fx.features_t(&x).unwrap());
        rel.push(relative_difference(&got, &want));
    }
    eprintln!(
        "{arch}: folded f32 in memory {in_memory:.2e}, f32 file {:.2e}, f16 file {:.2e}",
        rel[0], rel[1]
    );
    (in_memory, rel[0], rel[1])
}

fn check_agreement(arch: Arch, side: usize) {
    let (mem, f32_file, f16_file) = agreement(arch, side);
    assert!(mem < F32_BOUND, "{arch}: folded f32 {mem:.3e}");
    assert!(f32_file < F32_BOUND, "{arch}: exported f32 {f32_file:.3e}");
    assert!(f16_file < F16_BOUND, "{arch}: exported f16 {f16_file:.3e}");
}

#[test]
fn resnet18_folded_features_agree() {
    check_agreement(Arch::ResNet18, 64);
}

#[test]
fn resnet50_folded_features_agree() {
    check_agreement(Arch::ResNet50, 64);
}

#[test]
fn densenet121_folded_features_agree() {
    check_agreement(Arch::DenseNet121, 64);
}

/// At 72 px the second transition pools a 9×9 map (the last row and column dropped): the
/// folded network pools before that transition's convolution, the training network after.
#[test]
fn densenet121_folded_features_agree_on_odd_maps() {
    check_agreement(Arch::DenseNet121, 72);
}

/// The other architectures: same code paths with other depths; a small input keeps it quick.
#[test]
fn resnet34_resnet101_densenet169_fold_and_load() {
    for arch in [Arch::ResNet34, Arch::ResNet101, Arch::DenseNet169] {
        let net = network(arch, Vec::new());
        let x = probe_batch(1, 32, &Device::Cpu).unwrap();
        let want = features(&net.features_t(&x, false).unwrap());
        let ex = export(&checkpoint(&net, 32), None, ExportDtype::F32, source()).unwrap();
        let fx =
            FeatureExtractor::from_safetensors_bytes(&ex.model, "export", &Device::Cpu).unwrap();
        let rel = relative_difference(&features(&fx.features_t(&x).unwrap()), &want);
        assert!(rel < F32_BOUND, "{arch}: {rel:.3e}");
        assert!(ex.card.tasks.is_empty());
    }
}

/// File layout: names, dtypes, no BatchNorm statistics nor heads; the metadata parses.
#[test]
fn exported_file_layout() {
    for (arch, convs_with_bias, affines) in [
        // ResNet-18: stem + 8 blocks × 2 convs + 3 downsamples, all with bias; no affine.
        (Arch::ResNet18, 1 + 16 + 3, 0),
        // DenseNet-121: conv0 + one conv1 per dense layer; norm1 per layer, 3 transitions, norm5.
        (Arch::DenseNet121, 1 + 58, 58 + 3 + 1),
    ] {
        let net = network(arch, heads());
        let file = checkpoint(&net, 64);
        let ex = export(&file, None, ExportDtype::F16, source()).unwrap();
        let st = safetensors::SafeTensors::deserialize(&ex.model).unwrap();
        let names: Vec<String> = st.names().into_iter().map(String::from).collect();
        let count = |suffix: &str| names.iter().filter(|n| n.ends_with(suffix)).count();
        assert_eq!(count(".bias"), convs_with_bias, "{arch}");
        assert_eq!(count(".scale"), affines, "{arch}");
        assert_eq!(count(".shift"), affines, "{arch}");
        assert_eq!(count("running_mean") + count("running_var"), 0);
        assert_eq!(count("num_batches_tracked"), 0);
        assert!(names.iter().all(|n| !n.starts_with("heads.")));
        let mut kept = 0;
        for (name, view) in st.tensors() {
            let stem = name == "conv1.weight" || name == "features.conv0.weight";
            if view.shape().len() == 1 || stem {
                assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
                kept += view.shape().iter().product::<usize>();
            } else {
                assert_eq!(view.dtype(), safetensors::Dtype::F16, "{name}");
            }
        }
        assert!(
            kept * 50 < ex.card.parameters,
            "{arch}: {kept} values kept in f32"
        );
        assert_eq!(ex.card.tensors, names.len());
        assert_eq!(ex.card.parameters, ex.net.parameter_count().unwrap());
        let back = read_safetensors_bytes(&ex.model, "export", &Device::Cpu).unwrap();
        assert_eq!(export_card(&back).unwrap().unwrap(), ex.card);
        assert!(is_folded(&back).unwrap());
        let meta = back.model_card().unwrap().unwrap();
        assert!(meta.heads.is_empty() && meta.classifier.is_none());
        assert_eq!(meta.input_size, 64);
        // Without any metadata the folded names alone are recognised.
        let bare = TensorFile {
            metadata: Default::default(),
            ..back
        };
        assert!(is_folded(&bare).unwrap());
        assert_eq!(resolve_arch(&bare, None).unwrap(), arch);
        let fx = FeatureExtractor::from_tensor_file(&bare, None, &Device::Cpu).unwrap();
        assert!(fx.is_folded() && fx.export_card().is_none());
    }
}

/// Exporting an export changes the dtype only; the card keeps the tasks.
#[test]
fn re_exporting_an_export() {
    let net = network(Arch::ResNet18, heads());
    let first = export(&checkpoint(&net, 64), None, ExportDtype::F32, source()).unwrap();
    let file = read_safetensors_bytes(&first.model, "web/model.safetensors", &Device::Cpu).unwrap();
    let info = SourceInfo {
        file: "web/model.safetensors".into(),
        sha256: sha256_hex(&first.model),
    };
    let second = export(&file, None, ExportDtype::F16, info.clone()).unwrap();
    assert_eq!(second.card.tasks, heads());
    assert_eq!(second.card.source, info);
    assert_eq!(second.card.dtype, ExportDtype::F16);
    let x = probe_batch(1, 64, &Device::Cpu).unwrap();
    let a = features(&first.net.features(&x).unwrap());
    let b = features(&second.net.features(&x).unwrap());
    assert_eq!(a, b, "re-loading an f32 export is exact");
}

#[test]
fn bad_inputs_are_errors_naming_the_file() {
    // No weights at all: no architecture to be found.
    let empty = TensorFile {
        tensors: vec![(
            "features".into(),
            Tensor::zeros((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap(),
        )],
        metadata: Default::default(),
        source: "feats.safetensors".into(),
    };
    let e = export(&empty, None, ExportDtype::F32, source()).unwrap_err();
    assert!(e.to_string().contains("feats.safetensors"), "{e}");
    // With an architecture: the missing tensors are counted.
    let e = export(&empty, Some(Arch::ResNet18), ExportDtype::F32, source()).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("feats.safetensors") && msg.contains("missing"),
        "{msg}"
    );

    // A folded file with a tensor removed, or reshaped.
    let net = network(Arch::ResNet18, Vec::new());
    let ex = export(&checkpoint(&net, 64), None, ExportDtype::F32, source()).unwrap();
    let mut file = read_safetensors_bytes(&ex.model, "web.safetensors", &Device::Cpu).unwrap();
    file.tensors.retain(|(n, _)| n != "layer2.0.conv1.bias");
    let e = FeatureExtractor::from_tensor_file(&file, None, &Device::Cpu).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("web.safetensors") && msg.contains("layer2.0.conv1.bias"),
        "{msg}"
    );
    let mut file = read_safetensors_bytes(&ex.model, "web.safetensors", &Device::Cpu).unwrap();
    for (n, t) in &mut file.tensors {
        if n == "conv1.bias" {
            *t = Tensor::zeros(65, candle_core::DType::F32, &Device::Cpu).unwrap();
        }
    }
    let e = FeatureExtractor::from_tensor_file(&file, None, &Device::Cpu).unwrap_err();
    assert!(e.to_string().contains("`conv1.bias` has shape [65]"), "{e}");
    // An architecture override that contradicts the card.
    let e = export(&file, Some(Arch::ResNet50), ExportDtype::F32, source()).unwrap_err();
    assert!(e.to_string().contains("web.safetensors"), "{e}");

    // Weights beyond f16's range.
    let big = network(Arch::ResNet18, Vec::new());
    let e = big.store().get("layer1.0.conv1.weight").unwrap();
    e.var.set(&(e.var.as_tensor() * 1e6).unwrap()).unwrap();
    let err = export(&checkpoint(&big, 64), None, ExportDtype::F16, source()).unwrap_err();
    assert!(err.to_string().contains("`layer1.0.conv1.weight`"), "{err}");
    assert!(export(&checkpoint(&big, 64), None, ExportDtype::F32, source()).is_ok());
}

#[test]
fn card_markdown_and_dtype_parsing() {
    let net = network(Arch::DenseNet121, heads());
    let ex = export(&checkpoint(&net, 64), None, ExportDtype::F16, source()).unwrap();
    let md = ex.card.to_markdown();
    for want in [
        "densenet121",
        "1024-d features",
        "centre crop 64×64",
        "folded: true",
        "dtype f16",
        "| lung | aca, n, scc |",
        &sha256_hex(b"checkpoint"),
        "`NORM.scale` + `NORM.shift`",
    ] {
        assert!(md.contains(want), "missing {want:?} in\n{md}");
    }
    let json: serde_json::Value = serde_json::from_str(&ex.card.to_json().unwrap()).unwrap();
    assert_eq!(json["folded"], true);
    assert_eq!(json["dtype"], "f16");
    assert_eq!(json["architecture"], "densenet121");
    assert_eq!(json["tasks"][1]["classes"][0], "idc");
    assert_eq!("F16".parse::<ExportDtype>().unwrap(), ExportDtype::F16);
    assert_eq!("float32".parse::<ExportDtype>().unwrap(), ExportDtype::F32);
    assert!("bf16".parse::<ExportDtype>().is_err());
}

#[test]
fn relative_difference_edge_cases() {
    assert_eq!(relative_difference(&[], &[]), 0.0);
    assert_eq!(relative_difference(&[1.0], &[1.0, 2.0]), f64::INFINITY);
    assert!((relative_difference(&[3.0, 4.0], &[3.0, 0.0]) - 4.0 / 3.0).abs() < 1e-12);
}

/// On the PyTorch fixtures (torchvision state dicts with BatchNorm statistics calibrated on
/// real tiles; features computed in float64), the folded f32 network is as close to the exact
/// features as the training network in f32: folding adds no error of its own.
#[test]
fn folded_features_match_the_float64_fixtures() {
    let dir = crate::testdata::fixtures_dir();
    let images =
        crate::weights::read_weights_file(&dir.join("preprocess.safetensors"), &Device::Cpu)
            .unwrap();
    let batch: Vec<Tensor> = (0..4)
        .map(|i| images.get(&format!("image{i}")).unwrap().clone())
        .collect();
    let x = Tensor::stack(&batch, 0).unwrap();
    for arch in [Arch::ResNet18, Arch::ResNet50, Arch::DenseNet121] {
        let path = dir.join(format!("{arch}.safetensors"));
        let file = crate::weights::read_weights_file(&path, &Device::Cpu).unwrap();
        let expected = crate::weights::read_weights_file(
            &dir.join(format!("{arch}_expected.safetensors")),
            &Device::Cpu,
        )
        .unwrap();
        let exact = features(expected.get("features").unwrap());
        let unfolded = FeatureExtractor::from_tensor_file(&file, None, &Device::Cpu).unwrap();
        let base = relative_difference(&features(&unfolded.features_t(&x).unwrap()), &exact);
        let mut rel = Vec::new();
        for dtype in [ExportDtype::F32, ExportDtype::F16] {
            let ex = export(&file, None, dtype, source()).unwrap();
            let fx = FeatureExtractor::from_safetensors_bytes(&ex.model, "export", &Device::Cpu)
                .unwrap();
            rel.push(relative_difference(
                &features(&fx.features_t(&x).unwrap()),
                &exact,
            ));
        }
        eprintln!(
            "{arch} vs float64 fixture: unfolded f32 {base:.2e}, folded f32 {:.2e}, f16 {:.2e}",
            rel[0], rel[1]
        );
        assert!(
            rel[0] < (2.0 * base).max(F32_BOUND),
            "{arch}: folded f32 {:.3e}",
            rel[0]
        );
        assert!(rel[1] < 1e-2, "{arch}: f16 {:.3e}", rel[1]);
    }
}
