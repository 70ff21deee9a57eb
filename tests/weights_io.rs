//! Weights I/O: exact save → load round trips, partial loads that name extras, and clear
//! errors for truncated files and the wrong architecture.

use candle_core::{DType, Device};
use mtpath_shared::testdata::fixtures_dir;
use mtpath_shared::weights::{read_safetensors_bytes, read_weights_file, LoadMode, ModelMetadata};
use mtpath_shared::{Arch, HeadSpec, Network, NetworkSpec};

fn heads() -> Vec<HeadSpec> {
    vec![
        HeadSpec {
            name: "lung".into(),
            classes: vec!["aca".into(), "n".into(), "scc".into()],
        },
        HeadSpec {
            name: "breast".into(),
            classes: vec!["idc".into(), "non_idc".into()],
        },
    ]
}

#[test]
fn save_then_load_is_exact_and_keeps_metadata() {
    let spec = NetworkSpec::multitask(Arch::ResNet18, heads());
    let net = Network::new(spec.clone(), &Device::Cpu, 7).unwrap();
    let meta = ModelMetadata::imagenet(&spec);
    let dir = std::env::temp_dir().join(format!("mtpath-roundtrip-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.safetensors");
    net.save_safetensors(&path, &meta).unwrap();

    let file = read_weights_file(&path, &Device::Cpu).unwrap();
    assert_eq!(file.model_card().unwrap().as_ref(), Some(&meta));
    let (back, back_meta) = Network::from_tensor_file(&file, &Device::Cpu).unwrap();
    assert_eq!(back_meta.heads, heads());
    for (a, b) in net.store().entries().iter().zip(back.store().entries()) {
        assert_eq!(a.name, b.name);
        let (x, y) = (a.var.as_tensor(), b.var.as_tensor());
        assert_eq!(x.dtype(), y.dtype(), "{}", a.name);
        let diff = (x.to_dtype(DType::F64).unwrap() - y.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert_eq!(diff, 0.0, "{} changed in the round trip", a.name);
    }
    // The trunk carries torchvision's names: no prefix, `num_batches_tracked` included.
    assert!(file.get("layer4.1.bn2.num_batches_tracked").is_some());
    assert!(file.get("conv1.weight").is_some());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn partial_load_names_the_extra_tensors_and_strict_refuses_them() {
    let file =
        read_weights_file(&fixtures_dir().join("resnet18.safetensors"), &Device::Cpu).unwrap();
    let net = Network::new(
        NetworkSpec::multitask(Arch::ResNet18, heads()),
        &Device::Cpu,
        0,
    )
    .unwrap();
    let report = net.load_weights(&file, LoadMode::Partial).unwrap();
    assert_eq!(
        report.unexpected,
        vec!["fc.bias".to_string(), "fc.weight".to_string()]
    );
    assert_eq!(
        report.missing,
        vec![
            "heads.0.weight",
            "heads.0.bias",
            "heads.1.weight",
            "heads.1.bias"
        ]
    );
    let err = net
        .load_weights(&file, LoadMode::Strict)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("fc.weight") && err.contains("heads.0.weight"),
        "{err}"
    );
}

#[test]
fn wrong_architecture_is_a_clear_error() {
    let file =
        read_weights_file(&fixtures_dir().join("resnet18.safetensors"), &Device::Cpu).unwrap();
    let net = Network::new(NetworkSpec::trunk(Arch::ResNet50), &Device::Cpu, 0).unwrap();
    let err = net
        .load_weights(&file, LoadMode::Partial)
        .unwrap_err()
        .to_string();
    assert!(err.contains("resnet18.safetensors"), "{err}");
    assert!(err.contains("looks like resnet18"), "{err}");
}

#[test]
fn truncated_and_foreign_files_are_clear_errors() {
    let path = fixtures_dir().join("resnet18.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let err = read_safetensors_bytes(&bytes[..bytes.len() / 2], "half.safetensors", &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("half.safetensors") && err.contains("truncated"),
        "{err}"
    );
    let dir = std::env::temp_dir().join(format!("mtpath-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, content) in [
        ("empty.pth", &b""[..]),
        ("text.safetensors", &b"hello world, no tensors"[..]),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, content).unwrap();
        let err = read_weights_file(&p, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_architecture_builds_with_torchvision_parameter_counts() {
    // torchvision's parameter counts without the classifier (trunk only).
    for (arch, params) in [
        (Arch::ResNet18, 11_176_512),
        (Arch::ResNet34, 21_284_672),
        (Arch::ResNet50, 23_508_032),
        (Arch::ResNet101, 42_500_160),
        (Arch::DenseNet121, 6_953_856),
        (Arch::DenseNet169, 12_484_480),
    ] {
        let net = Network::new(NetworkSpec::trunk(arch), &Device::Cpu, 0).unwrap();
        assert_eq!(net.store().parameter_count(), params, "{arch}");
        let names: Vec<&str> = net
            .store()
            .entries()
            .iter()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(Arch::infer_from_keys(names), Some(arch));
    }
}

/// Small `.pth` files written by `torch.save` (PyTorch 2.15) from the fixture ResNet-18's stem:
/// a plain float32 state dict, a float16 training checkpoint (`{"epoch", "state_dict",
/// "arch"}` with DataParallel's `module.` prefix), and a transposed (non-contiguous) tensor.
fn pth(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/tests/data/pth")
        .join(name)
}

fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn pytorch_pth_files_read_exactly() {
    let reference =
        read_weights_file(&fixtures_dir().join("resnet18.safetensors"), &Device::Cpu).unwrap();
    let stem = [
        "bn1.bias",
        "bn1.num_batches_tracked",
        "bn1.running_mean",
        "bn1.running_var",
        "bn1.weight",
        "conv1.weight",
        "fc.bias",
    ];

    let plain = read_weights_file(&pth("resnet18_stem.pth"), &Device::Cpu).unwrap();
    assert_eq!(plain.names().collect::<Vec<_>>(), stem);
    for name in stem {
        let got = plain.get(name).unwrap();
        let want = reference.get(name).unwrap();
        assert_eq!(max_abs_diff(got, want), 0.0, "{name}");
    }
    assert_eq!(plain.get("conv1.weight").unwrap().dtype(), DType::F32);

    // The float16 checkpoint: found under `state_dict`, read as f32, equal to the f16 rounding.
    let ckpt = read_weights_file(&pth("resnet18_stem_checkpoint_f16.pth"), &Device::Cpu).unwrap();
    for name in stem {
        let got = ckpt.get(&format!("module.{name}")).unwrap();
        let want = reference.get(name).unwrap();
        let want = if want.dtype().is_float() {
            want.to_dtype(DType::F16).unwrap()
        } else {
            want.clone()
        };
        assert_eq!(max_abs_diff(got, &want), 0.0, "{name}");
        if want.dtype().is_float() {
            assert_eq!(got.dtype(), DType::F32, "{name}");
        }
    }
    // ... and loads into a ResNet-18 in partial mode under torchvision's names.
    let net = Network::new(NetworkSpec::trunk(Arch::ResNet18), &Device::Cpu, 0).unwrap();
    let report = net.load_weights(&ckpt, LoadMode::Partial).unwrap();
    assert_eq!(report.unexpected, vec!["module.fc.bias".to_string()]);
    assert_eq!(report.loaded.len(), 6);
    assert!(report
        .missing
        .contains(&"layer1.0.conv1.weight".to_string()));

    // A transposed tensor keeps its strides: it reads back as the transpose.
    let strided = read_weights_file(&pth("strided.pth"), &Device::Cpu).unwrap();
    let want = reference
        .get("layer1.0.conv1.weight")
        .unwrap()
        .narrow(2, 1, 1)
        .unwrap()
        .narrow(3, 2, 1)
        .unwrap()
        .squeeze(3)
        .unwrap()
        .squeeze(2)
        .unwrap()
        .t()
        .unwrap();
    assert_eq!(max_abs_diff(strided.get("transposed").unwrap(), &want), 0.0);
}

#[test]
fn truncated_pth_is_a_clear_error() {
    let bytes = std::fs::read(pth("resnet18_stem.pth")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.pth");
    std::fs::write(&path, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let err = read_weights_file(&path, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cut.pth"), "{err}");
}

/// The trunk file mtpath writes has exactly torchvision's state-dict keys and shapes (the
/// fixture was saved by torchvision) minus the classifier: `load_state_dict(strict=False)`
/// reports only `fc.weight` and `fc.bias` missing.
#[test]
fn trunk_file_has_torchvision_keys_and_shapes() {
    let spec = NetworkSpec::multitask(Arch::ResNet18, heads());
    let net = Network::new(spec.clone(), &Device::Cpu, 3).unwrap();
    let bytes = net
        .trunk_safetensors_bytes(&ModelMetadata::imagenet(&spec))
        .unwrap();
    let trunk = read_safetensors_bytes(&bytes, "trunk.safetensors", &Device::Cpu).unwrap();
    let tv = read_weights_file(&fixtures_dir().join("resnet18.safetensors"), &Device::Cpu).unwrap();
    let mut want: Vec<(&str, Vec<usize>)> = tv
        .tensors
        .iter()
        .filter(|(n, _)| !n.starts_with("fc."))
        .map(|(n, t)| (n.as_str(), t.dims().to_vec()))
        .collect();
    let mut got: Vec<(&str, Vec<usize>)> = trunk
        .tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.dims().to_vec()))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    assert!(trunk.model_card().unwrap().unwrap().heads.is_empty());
}
