//! Bad input and faults, as a demanding user meets them: links in task folders, images changed
//! under the feature cache, damaged weights, closed pipes, backtraces, and settings that
//! `pool check` and `train` must judge alike.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{assert_ok, mtpath, s};
use mtpath_shared::features_file::FeaturesFile;
use mtpath_shared::testdata::data_dir;

/// A task folder with one subfolder per class, `n` real lymphoma tiles in each.
fn task(dir: &Path, n: usize) -> PathBuf {
    let root = dir.join("task");
    for class in ["cll", "fl"] {
        let from = data_dir().join("lymphoma/images").join(class);
        std::fs::create_dir_all(root.join(class)).unwrap();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&from)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for (i, file) in files.iter().take(n).enumerate() {
            std::fs::copy(file, root.join(class).join(format!("{class}_{i}.jpg"))).unwrap();
        }
    }
    root
}

fn pool(dir: &Path, tasks: &[&Path], train: &str) -> PathBuf {
    let mut text = String::from("seed = 0\n");
    for t in tasks {
        text.push_str(&format!("[[task]]\npath = \"{}\"\n", t.display()));
    }
    text.push_str(train);
    let p = dir.join("pool.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[cfg(unix)]
#[test]
fn links_in_a_task_neither_loop_nor_count_an_image_twice() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = task(dir.path(), 4);
    // A class folder holding a link to its parent, and a second way to another class's image.
    symlink(&root, root.join("cll/up")).unwrap();
    symlink(root.join("fl/fl_0.jpg"), root.join("cll/fl_0.jpg")).unwrap();
    let p = pool(dir.path(), &[&root], "");

    let o = mtpath(&["pool", "check", s(&p)]);
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(said.contains("cll/up") && said.contains("again"), "{said}");
    assert!(said.contains("cll/fl_0.jpg"), "{said}");

    let splits = dir.path().join("splits.csv");
    assert_ok(&mtpath(&[
        "pool",
        "check",
        s(&p),
        "--skip-bad",
        "--out",
        s(&splits),
    ]));
    let rows = std::fs::read_to_string(&splits).unwrap();
    assert_eq!(rows.lines().count(), 1 + 8, "{rows}");

    // `features DIR` walks the same way: 8 rows, not thousands, and a warning.
    let out = dir.path().join("f.safetensors");
    let o = mtpath(&[
        "features",
        "--weights",
        "random",
        "--size",
        "32",
        "--out",
        s(&out),
        s(&root),
    ]);
    assert_ok(&o);
    assert!(stderr(&o).contains("passed over"), "{}", stderr(&o));
    assert_eq!(FeaturesFile::read(&out).unwrap().n, 8);
}

#[test]
fn the_feature_cache_sees_images_swapped_under_the_same_names() {
    let dir = tempfile::tempdir().unwrap();
    let root = task(dir.path(), 3);
    let cache = dir.path().join("cache");
    let features = |out: &Path| {
        assert_ok(&mtpath(&[
            "features",
            "--weights",
            "random",
            "--size",
            "32",
            "--task",
            s(&root),
            "--cache",
            s(&cache),
            "--out",
            s(out),
        ]));
        let f = FeaturesFile::read(out).unwrap();
        let row = |name: &str| {
            let i = f.images.iter().position(|n| n.ends_with(name)).unwrap();
            f.features[i * f.dim..(i + 1) * f.dim].to_vec()
        };
        (row("cll/cll_0.jpg"), row("fl/fl_1.jpg"))
    };
    let (a, b) = features(&dir.path().join("1.safetensors"));
    assert_ne!(a, b);
    // Swap the two files' contents by renames: sizes and modification times move with them.
    let (x, y, tmp) = (
        root.join("cll/cll_0.jpg"),
        root.join("fl/fl_1.jpg"),
        root.join("t"),
    );
    std::fs::rename(&x, &tmp).unwrap();
    std::fs::rename(&y, &x).unwrap();
    std::fs::rename(&tmp, &y).unwrap();
    let (a2, b2) = features(&dir.path().join("2.safetensors"));
    assert_eq!(
        (a2, b2),
        (b, a),
        "features follow the images, not their names"
    );
}

#[test]
fn weights_with_a_nan_are_refused_naming_the_tensor() {
    use safetensors::tensor::TensorView;
    let dir = tempfile::tempdir().unwrap();
    let fixture = data_dir().join("../fixtures/resnet18.safetensors");
    let bytes = std::fs::read(&fixture).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let bn = owned
        .iter_mut()
        .find(|t| t.0 == "layer2.0.bn1.weight")
        .unwrap();
    bn.3[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bad = dir.path().join("nan.safetensors");
    std::fs::write(&bad, safetensors::serialize(views, None).unwrap()).unwrap();

    let out = dir.path().join("f.safetensors");
    let tile = data_dir().join("lymphoma/images/cll/cll_0.jpg");
    for args in [
        vec!["info", s(&bad)],
        vec!["features", "--weights", s(&bad), "--out", s(&out), s(&tile)],
    ] {
        let o = mtpath(&args);
        assert!(!o.status.success(), "{args:?}");
        let said = stderr(&o);
        assert!(
            said.contains("layer2.0.bn1.weight") && said.contains("NaN or infinite"),
            "{said}"
        );
    }
}

#[cfg(unix)]
#[test]
fn a_closed_pipe_ends_output_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let fixture = data_dir().join("../fixtures/resnet18.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtpath"))
        .args(["info", s(&fixture)])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before mtpath has read the weights and printed anything.
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.signal(), Some(libc_sigpipe()), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[cfg(unix)]
fn libc_sigpipe() -> i32 {
    13
}

#[test]
fn errors_carry_no_backtrace_when_rust_backtrace_is_set() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    // A PyTorch zip archive whose pickle is garbage: candle's reader fails.
    let pth = dir.path().join("bad.pth");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&pth).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(b"\x80\x02garbage").unwrap();
    zip.finish().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_mtpath"))
        .args(["info", s(&pth)])
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(
        said.contains("bad.pth") && said.contains("PyTorch archive"),
        "{said}"
    );
    assert!(
        !said.contains("candle_core::") && said.lines().count() == 1,
        "{said}"
    );
}

#[test]
fn pool_check_and_train_judge_settings_alike_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = task(dir.path(), 2);
    for (train, key) in [
        ("[train]\nbatchsize = 8\n", "batchsize"),
        ("[train]\nbatch = 0\n", "`batch`"),
    ] {
        let p = pool(dir.path(), &[&root], train);
        for args in [
            vec!["pool", "check", s(&p)],
            vec![
                "train",
                "--pool",
                s(&p),
                "--out",
                s(&dir.path().join("run")),
            ],
        ] {
            let o = mtpath(&args);
            assert!(!o.status.success(), "{args:?} accepted {train}");
            let said = stderr(&o);
            assert!(
                said.contains(key) && said.contains("pool.toml"),
                "{args:?}: {said}"
            );
        }
    }
    // The same folder as two tasks, spelled two ways.
    let again = root.join("../task");
    let p = pool(dir.path(), &[&root, &again], "");
    let o = mtpath(&["pool", "check", s(&p)]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("same folder"), "{}", stderr(&o));
}

#[test]
fn info_on_a_folder_says_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let o = mtpath(&["info", s(dir.path())]);
    assert!(!o.status.success());
    let said = stderr(&o);
    assert_eq!(said.matches("os error").count(), 1, "{said}");
}

#[test]
fn predict_refuses_a_probe_for_another_model_or_input_size() {
    let dir = tempfile::tempdir().unwrap();
    let tiles = common::tiles();
    let feats = dir.path().join("f.safetensors");
    let mut args = vec![
        "features",
        "--weights",
        "random",
        "--size",
        "32",
        "--out",
        s(&feats),
    ];
    args.extend(tiles.iter().map(|t| s(t)));
    assert_ok(&mtpath(&args));
    let meta = FeaturesFile::read(&feats).unwrap().metadata;
    let sha = meta["weights_sha256"].clone();
    assert_eq!(sha.len(), 64);

    let probe = dir.path().join("probe.json");
    let write_probe = |input_size: u32, sha: &str| {
        let coef: Vec<f64> = (0..512).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect();
        let json = serde_json::json!({
            "format": "mtpath-probe/1", "kind": "logistic", "classes": ["a", "b"], "c": 1.0,
            "n_features": 512, "coef": [coef], "intercept": [0.0],
            "features": {"architecture": "resnet18", "feature_dim": 512,
                         "input_size": input_size, "resize": 37, "model_sha256": sha},
        });
        std::fs::write(&probe, json.to_string()).unwrap();
    };
    let predict = |extra: &[&str]| {
        let mut a = vec!["predict", "--probe", s(&probe), "--features", s(&feats)];
        a.extend_from_slice(extra);
        mtpath(&a)
    };

    write_probe(32, &sha);
    let o = predict(&[]);
    assert_ok(&o);
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));

    for (size, sha, what) in [
        (224, sha.as_str(), "input size"),
        (32, &"0".repeat(64), "SHA-256"),
    ] {
        write_probe(size, sha);
        let o = predict(&[]);
        assert!(!o.status.success(), "{what}");
        let said = stderr(&o);
        assert!(
            said.contains(what) && said.contains("--ignore-provenance"),
            "{said}"
        );
        let o = predict(&["--ignore-provenance"]);
        assert_ok(&o);
        assert!(stderr(&o).contains("warning"), "{}", stderr(&o));
    }

    // Embedding images for the probe checks the same way: the random trunk's default input is
    // 224 px, the probe's 32 px.
    write_probe(32, &sha);
    let mut args = vec!["predict", "--probe", s(&probe), "--weights", "random"];
    args.extend(tiles.iter().map(|t| s(t)));
    let o = mtpath(&args);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("input size"), "{}", stderr(&o));
}

#[test]
fn an_absurd_batch_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = task(dir.path(), 2);
    let p = pool(dir.path(), &[&root], "[train]\nsize = 32\n");
    let run = dir.path().join("run");
    let o = mtpath(&[
        "train",
        "--pool",
        s(&p),
        "--out",
        s(&run),
        "--batch",
        "100000000000",
    ]);
    assert!(!o.status.success());
    assert_eq!(o.status.code(), Some(1), "an error, not an abort");
    let said = stderr(&o);
    assert!(
        said.contains("needs at least") && said.contains("available"),
        "{said}"
    );
    assert!(!run.join("run.json").exists(), "no dead-end run folder");
}
