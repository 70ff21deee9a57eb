//! `mtpath export` end to end: a small random checkpoint (with non-trivial BatchNorm
//! statistics) exported as f32 and f16, then `mtpath features` on the export and on the
//! original; and the errors of bad inputs.

mod common;

use common::{mtpath, s, tiles};
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use mtpath_shared::export::{relative_difference, sha256_hex};
use mtpath_shared::weights::{read_weights_file, ModelMetadata};
use mtpath_shared::{Arch, HeadSpec, Network, NetworkSpec};

fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn fails_naming(o: &std::process::Output, name: &str) {
    assert!(!o.status.success(), "expected a failure naming {name}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(name), "the error does not name {name}: {err}");
}

fn heads() -> Vec<HeadSpec> {
    vec![
        HeadSpec {
            name: "lung".into(),
            classes: vec!["aca".into(), "n".into(), "scc".into()],
        },
        HeadSpec {
            name: "blood".into(),
            classes: vec!["lymphocyte".into(), "neutrophil".into()],
        },
    ]
}

/// A ResNet-18 multi-task checkpoint at `run/name/` with random weights and BatchNorm
/// statistics and affine parameters drawn from a fixed sequence (a fresh network's mean 0,
/// var 1, γ 1, β 0 would hide a wrong fold), input 64 px.
fn random_checkpoint(run: &Path, name: &str, seed: u64) -> PathBuf {
    let net = Network::new(
        NetworkSpec::multitask(Arch::ResNet18, heads()),
        &Device::Cpu,
        seed,
    )
    .unwrap();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = |lo: f32, hi: f32| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        lo + (hi - lo) * ((state >> 40) as f32 / (1u64 << 24) as f32)
    };
    for e in net.store().entries() {
        if e.var.rank() != 1 || !net.is_trunk_name(&e.name) {
            continue;
        }
        let (lo, hi) = match e.name.rsplit('.').next() {
            Some("running_var") => (0.3, 2.0),
            Some("running_mean") => (-0.3, 0.3),
            Some("weight") => (0.5, 1.5),
            _ => (-0.2, 0.2),
        };
        let values: Vec<f32> = (0..e.var.elem_count()).map(|_| uniform(lo, hi)).collect();
        let n = values.len();
        e.var
            .set(&Tensor::from_vec(values, n, &Device::Cpu).unwrap())
            .unwrap();
    }
    let mut meta = ModelMetadata::imagenet(net.spec());
    meta.input_size = 64;
    meta.resize_shorter = 73;
    let dir = run.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("model.safetensors");
    net.save_safetensors(&model, &meta).unwrap();
    std::fs::write(dir.join("state.json"), "{}").unwrap();
    model
}

/// `mtpath features` of the tiles with `weights`, as one flat vector.
fn features(weights: &Path, out: &Path) -> Vec<f32> {
    let tiles = tiles();
    let mut args = vec!["features", "--weights", s(weights), "--out", s(out)];
    args.extend(tiles.iter().map(|p| s(p)));
    ok(&mtpath(&args));
    let file = read_weights_file(out, &Device::Cpu).unwrap();
    let t = file.get("features").unwrap();
    assert_eq!(t.dims(), &[3, 512]);
    t.flatten_all().unwrap().to_vec1().unwrap()
}

#[test]
fn export_a_run_then_embed_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let best = random_checkpoint(&run, "best", 3);
    random_checkpoint(&run, "last", 4);
    let web = dir.path().join("web");
    let o = mtpath(&["export", s(&run), "--out", s(&web)]);
    ok(&o);
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(log.contains("check: features differ"), "{log}");

    // The card: in card.json and, identical, in the model's metadata.
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(web.join("card.json")).unwrap()).unwrap();
    assert_eq!(card["folded"], true);
    assert_eq!(card["dtype"], "f32");
    assert_eq!(card["architecture"], "resnet18");
    assert_eq!(card["feature_dim"], 512);
    assert_eq!(card["input_size"], 64);
    assert_eq!(card["resize_shorter"], 73);
    assert_eq!(card["tasks"][0]["name"], "lung");
    assert_eq!(card["tasks"][1]["classes"][1], "neutrophil");
    assert_eq!(card["source"]["file"], best.display().to_string());
    assert_eq!(
        card["source"]["sha256"],
        sha256_hex(&std::fs::read(&best).unwrap())
    );
    let model = web.join("model.safetensors");
    let file = read_weights_file(&model, &Device::Cpu).unwrap();
    let embedded: serde_json::Value =
        serde_json::from_str(&file.metadata["mtpath_export"]).unwrap();
    assert_eq!(embedded, card);
    assert!(file.get("conv1.bias").is_some() && file.get("bn1.weight").is_none());
    assert!(file.names().all(|n| !n.starts_with("heads.")));
    let md = std::fs::read_to_string(web.join("card.md")).unwrap();
    assert!(
        md.contains("folded: true") && md.contains("| lung | aca, n, scc |"),
        "{md}"
    );

    // `mtpath features` on the export equals it on the original checkpoint.
    let want = features(&best, &dir.path().join("orig.safetensors"));
    let got = features(&model, &dir.path().join("web.safetensors"));
    let rel = relative_difference(&got, &want);
    eprintln!("f32 export vs checkpoint: {rel:.2e}");
    assert!(rel < 1e-5, "f32 export: relative difference {rel:.3e}");

    // f16: half the size, features within the stated bound.
    let web16 = dir.path().join("web16");
    ok(&mtpath(&[
        "export",
        s(&run),
        "--out",
        s(&web16),
        "--dtype",
        "f16",
    ]));
    let model16 = web16.join("model.safetensors");
    let (size32, size16) = (
        std::fs::metadata(&model).unwrap().len(),
        std::fs::metadata(&model16).unwrap().len(),
    );
    assert!(size16 * 2 < size32 + 64 * 1024, "{size16} vs {size32}");
    let got16 = features(&model16, &dir.path().join("web16.safetensors"));
    let rel16 = relative_difference(&got16, &want);
    eprintln!("f16 export vs checkpoint: {rel16:.2e}");
    assert!(rel16 < 3e-3, "f16 export: relative difference {rel16:.3e}");

    // A run with only `last`, and a weights file given directly (with --arch where it has no
    // card: the trunk alone, as torchvision would save it).
    let run2 = dir.path().join("run2");
    let last = random_checkpoint(&run2, "last", 5);
    let web2 = dir.path().join("web2");
    ok(&mtpath(&["export", s(&run2), "--out", s(&web2)]));
    let card2 = std::fs::read_to_string(web2.join("card.json")).unwrap();
    assert!(card2.contains(&last.display().to_string()), "{card2}");
    let bare = dir.path().join("bare.safetensors");
    let tensors: Vec<(String, Tensor)> = read_weights_file(&best, &Device::Cpu)
        .unwrap()
        .tensors
        .into_iter()
        .filter(|(n, _)| !n.starts_with("heads."))
        .collect();
    safetensors::serialize_to_file(tensors, None, &bare).unwrap();
    let web3 = dir.path().join("web3");
    ok(&mtpath(&[
        "export",
        s(&bare),
        "--arch",
        "resnet18",
        "--out",
        s(&web3),
    ]));
    let got3 = features(
        &web3.join("model.safetensors"),
        &dir.path().join("web3.safetensors"),
    );
    // Same trunk, but a bare file has ImageNet's 256 → 224 preprocessing: compare with the
    // original at that size via `features --size`.
    let tiles = tiles();
    let orig224 = dir.path().join("orig224.safetensors");
    let mut args = vec![
        "features",
        "--weights",
        s(&best),
        "--size",
        "224",
        "--out",
        s(&orig224),
    ];
    args.extend(tiles.iter().map(|p| s(p)));
    ok(&mtpath(&args));
    let want224: Vec<f32> = read_weights_file(&orig224, &Device::Cpu)
        .unwrap()
        .get("features")
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let rel3 = relative_difference(&got3, &want224);
    assert!(rel3 < 1e-5, "bare-file export: {rel3:.3e}");
}

#[test]
fn bad_inputs_are_errors_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("web");

    let missing = dir.path().join("nope.safetensors");
    fails_naming(
        &mtpath(&["export", s(&missing), "--out", s(&out)]),
        "nope.safetensors",
    );

    // A safetensors file without weights (features of images).
    let feats = dir.path().join("feats.safetensors");
    let t = Tensor::zeros((2, 512), candle_core::DType::F32, &Device::Cpu).unwrap();
    safetensors::serialize_to_file([("features".to_string(), t)], None, &feats).unwrap();
    fails_naming(
        &mtpath(&["export", s(&feats), "--out", s(&out)]),
        "feats.safetensors",
    );
    fails_naming(
        &mtpath(&["export", s(&feats), "--arch", "resnet18", "--out", s(&out)]),
        "feats.safetensors",
    );

    // Not a weights file at all.
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not weights").unwrap();
    fails_naming(
        &mtpath(&["export", s(&text), "--out", s(&out)]),
        "notes.txt",
    );

    // A directory that is no run.
    let empty = dir.path().join("empty-run");
    std::fs::create_dir_all(&empty).unwrap();
    fails_naming(
        &mtpath(&["export", s(&empty), "--out", s(&out)]),
        "empty-run",
    );

    // Bad dtype.
    let o = mtpath(&["export", s(&feats), "--out", s(&out), "--dtype", "int8"]);
    fails_naming(&o, "int8");

    // Writing into the checkpoint itself is refused.
    let run = dir.path().join("run");
    let best = random_checkpoint(&run, "best", 1);
    std::fs::write(run.join("best").join("card.json"), "{}").unwrap();
    fails_naming(
        &mtpath(&["export", s(&run), "--out", s(&run.join("best"))]),
        "model.safetensors",
    );
    assert!(read_weights_file(&best, &Device::Cpu)
        .unwrap()
        .get("bn1.weight")
        .is_some());
    assert!(!out.exists(), "nothing is written on failure");
}
