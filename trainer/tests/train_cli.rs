//! `mtpath train` end to end on real tasks: the loss falls and validation beats chance, resuming
//! an interrupted run is bit-identical to an uninterrupted one, divergence stops the run.

mod common;

use common::{assert_ok, mtpath, s};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Device;
use mtpath_shared::testdata::data_dir;
use mtpath_shared::weights::read_weights_file;

/// A pool file over real tasks with a `[train]` table.
fn pool_file(dir: &Path, tasks: &[&str], train: &str) -> PathBuf {
    let mut text = String::from("seed = 3\n");
    for t in tasks {
        // `name:crop` picks a crop policy, e.g. "pbc-blood:resize".
        let (t, crop) = t.split_once(':').unwrap_or((t, "random-crop"));
        text.push_str(&format!(
            "[[task]]\npath = \"{}\"\ncrop = \"{crop}\"\n",
            data_dir().join(t).display()
        ));
    }
    text.push_str("[train]\n");
    text.push_str(train);
    let p = dir.join("pool.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn csv_rows(run: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(run.join("metrics.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(String::from).collect())
        .collect()
}

#[test]
fn short_real_run_learns() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(
        dir.path(),
        &["idc-breast", "lc25000-lung", "pbc-blood:resize"],
        "arch = \"resnet18\"\nsize = 64\nbatch = 24\niters = 120\nlr = 0.05\nval_every = 120\n\
         val_max_per_task = 120\ncheckpoint_every = 60\nlr_warmup_iters = 10\n\
         schedule = { type = \"cosine\", total_iters = 110, min_lr = 0.0 }\n",
    );
    let run = dir.path().join("run");
    let o = mtpath(&[
        "train",
        "--pool",
        s(&pool),
        "--out",
        s(&run),
        "--threads",
        "2",
    ]);
    assert_ok(&o);

    let rows = csv_rows(&run);
    let losses: Vec<f64> = rows
        .iter()
        .filter(|r| r[1] == "train" && r[2] == "all")
        .map(|r| r[3].parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 12);
    let first = losses[..2].iter().sum::<f64>() / 2.0;
    let last = losses[losses.len() - 2..].iter().sum::<f64>() / 2.0;
    assert!(last < 0.8 * first, "loss did not fall: {losses:?}");
    // Every logged window says how much of it went to waiting for the loader.
    let waits: Vec<f64> = std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "train")
        .map(|v| v["data_wait_fraction"].as_f64().unwrap())
        .collect();
    assert_eq!(waits.len(), 12);
    assert!(waits.iter().all(|w| (0.0..=1.0).contains(w)), "{waits:?}");
    assert!(run.join("plots/training.png").is_file());

    // Balanced accuracy beats chance (1/C) clearly on average and on at least two tasks
    // (120 steps from random weights: the 8-class blood-cell task may still be near chance).
    let chance = [
        ("idc-breast", 0.5),
        ("lc25000-lung", 1.0 / 3.0),
        ("pbc-blood", 0.125),
    ];
    let val: Vec<&Vec<String>> = rows.iter().filter(|r| r[1] == "val").collect();
    assert_eq!(val.len(), 3);
    let mut above = 0;
    let mut margin = 0.0;
    for (task, c) in chance {
        let r = val.iter().find(|r| r[2] == task).unwrap();
        let bacc: f64 = r[5].parse().unwrap();
        margin += (bacc - c) / 3.0;
        above += usize::from(bacc > c + 0.1);
    }
    assert!(
        above >= 2 && margin > 0.1,
        "validation near chance: {val:?}"
    );

    // Checkpoint layout: the trunk file has torchvision names only; the card names the tasks.
    let trunk = read_weights_file(&run.join("last/trunk.safetensors"), &Device::Cpu).unwrap();
    assert!(trunk.get("conv1.weight").is_some());
    assert!(trunk.get("layer4.1.bn2.running_var").is_some());
    assert!(trunk
        .names()
        .all(|n| !n.starts_with("heads.") && !n.starts_with("fc.")));
    let model = read_weights_file(&run.join("best/model.safetensors"), &Device::Cpu).unwrap();
    assert!(model.get("heads.2.weight").is_some());
    let card: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("last/card.json")).unwrap())
            .unwrap();
    assert_eq!(card["tasks"][1]["name"], "lc25000-lung");
    assert_eq!(card["iteration"], 120);
    assert!(std::fs::read_to_string(run.join("last/card.md"))
        .unwrap()
        .contains("pbc-blood"));
    assert!(run.join("splits.csv").is_file());
    assert!(std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

fn tensors_equal(a: &Path, b: &Path) {
    let fa = read_weights_file(a, &Device::Cpu).unwrap();
    let fb = read_weights_file(b, &Device::Cpu).unwrap();
    assert_eq!(
        fa.names().collect::<Vec<_>>(),
        fb.names().collect::<Vec<_>>()
    );
    for (name, ta) in &fa.tensors {
        let tb = fb.get(name).unwrap();
        let (va, vb) = (
            ta.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap(),
            tb.flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap(),
        );
        let (va, vb) = (va.to_vec1::<f64>().unwrap(), vb.to_vec1::<f64>().unwrap());
        assert!(
            va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

const SMALL: &str = "size = 32\nbatch = 8\niters = 24\nlr = 0.02\nval_every = 0\n\
    val_max_per_task = 16\ncheckpoint_every = 4\nhead_warmup_iters = 3\nworkers = 2\n";

#[cfg(unix)]
#[test]
fn interrupted_and_resumed_run_is_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &["lc25000-lung", "lymphoma"], SMALL);

    let straight = dir.path().join("straight");
    assert_ok(&mtpath(&[
        "train",
        "--pool",
        s(&pool),
        "--out",
        s(&straight),
    ]));

    // Interrupt a second run with SIGTERM (what Slurm and Kubernetes send) once it has written
    // a checkpoint past the warm-up.
    let cut = dir.path().join("cut");
    let child = Command::new(env!("CARGO_BIN_EXE_mtpath"))
        .args([
            "train",
            "--pool",
            s(&pool),
            "--out",
            s(&cut),
            "--iters",
            "100000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let state = std::fs::read_to_string(cut.join("last/state.json")).unwrap_or_default();
        if state.contains("\"iteration\": 8") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // While it runs, a second process in the same folder is refused by the run's lock.
    let beside = mtpath(&["train", "--resume", s(&cut), "--iters", "24"]);
    assert!(!beside.status.success());
    let said = String::from_utf8_lossy(&beside.stderr);
    assert!(
        said.contains("another mtpath process") && said.contains(&child.id().to_string()),
        "{said}"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stopped_at: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("last/state.json")).unwrap())
            .unwrap();
    let k = stopped_at["iteration"].as_u64().unwrap();
    assert!(k >= 8, "checkpoint at {k}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--resume"),
        "the message says how to continue"
    );

    if k < 24 {
        assert_ok(&mtpath(&["train", "--resume", s(&cut), "--iters", "24"]));
        for f in ["model.safetensors", "optimizer.safetensors"] {
            tensors_equal(&straight.join("last").join(f), &cut.join("last").join(f));
        }
        // The metrics have no rows from beyond the interruption twice.
        let iters: Vec<String> = csv_rows(&cut)
            .iter()
            .filter(|r| r[2] == "all")
            .map(|r| r[0].clone())
            .collect();
        assert_eq!(iters, vec!["10", "20", "24"]);
    }
}

#[test]
fn resume_twice_equals_straight_and_refuses_an_existing_run() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path(), &["lc25000-lung", "lymphoma"], SMALL);
    let straight = dir.path().join("straight");
    assert_ok(&mtpath(&[
        "train",
        "--pool",
        s(&pool),
        "--out",
        s(&straight),
        "--iters",
        "12",
    ]));
    let parts = dir.path().join("parts");
    assert_ok(&mtpath(&[
        "train",
        "--pool",
        s(&pool),
        "--out",
        s(&parts),
        "--iters",
        "2",
    ]));
    assert_ok(&mtpath(&["train", "--resume", s(&parts), "--iters", "7"]));
    assert_ok(&mtpath(&["train", "--resume", s(&parts), "--iters", "12"]));
    tensors_equal(
        &straight.join("last/model.safetensors"),
        &parts.join("last/model.safetensors"),
    );

    // Starting over an existing run is refused with the ways out.
    let o = mtpath(&["train", "--pool", s(&pool), "--out", s(&parts)]);
    assert!(!o.status.success());
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains("--resume") && said.contains("--force"),
        "{said}"
    );

    // --force starts over: the run equals a fresh one of the same length.
    std::fs::write(parts.join("notes.txt"), "kept").unwrap();
    let o = mtpath(&[
        "train",
        "--pool",
        s(&pool),
        "--out",
        s(&parts),
        "--iters",
        "12",
        "--force",
    ]);
    assert_ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force: removed the run"));
    assert!(
        parts.join("notes.txt").exists(),
        "files not written by the run stay"
    );
    tensors_equal(
        &straight.join("last/model.safetensors"),
        &parts.join("last/model.safetensors"),
    );

    // A run stopped before its first checkpoint (no `last` yet) is no dead end: the same
    // command starts it over, and so does --resume.
    for again in [
        vec![
            "train",
            "--pool",
            s(&pool),
            "--out",
            s(&parts),
            "--iters",
            "12",
        ],
        vec!["train", "--resume", s(&parts), "--iters", "12"],
    ] {
        std::fs::remove_dir_all(parts.join("last")).unwrap();
        std::fs::remove_dir_all(parts.join("best")).ok();
        let o = mtpath(&again);
        assert_ok(&o);
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("stopped before its first checkpoint"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        tensors_equal(
            &straight.join("last/model.safetensors"),
            &parts.join("last/model.safetensors"),
        );
    }
}

#[test]
fn divergence_stops_with_a_message_and_keeps_the_last_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(
        dir.path(),
        &["lc25000-lung", "lymphoma"],
        "size = 32\nbatch = 8\niters = 200\nlr = 1e8\nmomentum = 0.0\nval_every = 0\n\
         checkpoint_every = 1\n",
    );
    let run = dir.path().join("run");
    let o = mtpath(&["train", "--pool", s(&pool), "--out", s(&run)]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("diverged") && err.contains("learning rate"),
        "{err}"
    );
    if let Ok(text) = std::fs::read_to_string(run.join("last/state.json")) {
        let state: serde_json::Value = serde_json::from_str(&text).unwrap();
        let model = read_weights_file(&run.join("last/model.safetensors"), &Device::Cpu).unwrap();
        for (name, t) in &model.tensors {
            let v = t
                .flatten_all()
                .unwrap()
                .to_dtype(candle_core::DType::F64)
                .unwrap();
            assert!(
                v.to_vec1::<f64>().unwrap().iter().all(|x| x.is_finite()),
                "{name} is not finite in the kept checkpoint (iteration {})",
                state["iteration"]
            );
        }
    }
}

#[test]
fn demo_runs_on_the_real_tasks_and_says_where_the_run_is() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let data = data_dir();
    let o = mtpath(&[
        "demo",
        "--data",
        s(&data),
        "--out",
        s(&out),
        "--hold-out",
        "lymphoma,tcga-luad-lusc",
        "--iters",
        "6",
        "--size",
        "32",
        "--batch",
        "8",
        "--seeds",
        "2",
        "--single-task-epochs",
        "1",
    ]);
    assert_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("holding out lymphoma, tcga-luad-lusc"),
        "{stderr}"
    );
    assert!(stderr.contains("leaving out nct-crc-samples"), "{stderr}");
    assert!(stdout.contains("trunk.safetensors"), "{stdout}");
    assert!(out.join("best/trunk.safetensors").is_file());
    // The held-out comparison: multi-task trunk vs random init vs single-task, linear and kNN
    // probes (and the single-task network's own head), with plots.
    assert!(stdout.contains("held-out tasks, 2 seeds"), "{stdout}");
    // Two held-out tasks: their mean, and the trunk's lead over each baseline paired by seed.
    assert!(stdout.contains("mean of tasks"), "{stdout}");
    assert!(
        stdout.contains("multi-task − random init (linear, paired by seed): ")
            && stdout.contains("multi-task − single-task (knn, paired by seed): "),
        "{stdout}"
    );
    let table = std::fs::read_to_string(out.join("held-out/comparison.md")).unwrap();
    assert_eq!(table.matches("| multi-task |").count(), 2, "{table}");
    assert_eq!(table.matches("| random init |").count(), 2, "{table}");
    assert_eq!(table.matches("| single-task |").count(), 3, "{table}");
    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("held-out/eval/multi-task-linear/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(results["results"][0]["values"].as_array().unwrap().len(), 2);
    for plot in [
        "held-out/plots/held-out-linear.png",
        "held-out/plots/held-out-knn.svg",
        "plots/training.png",
    ] {
        assert!(out.join(plot).is_file(), "{plot} missing");
        assert!(
            stdout.contains(plot.rsplit('/').next().unwrap()) || plot.ends_with(".svg"),
            "{stdout}"
        );
    }
    image::open(out.join("held-out/plots/held-out-linear.png")).expect("a readable PNG");
    // The pool file the demo wrote is a valid pool for `mtpath train` / `pool check`.
    let pool = out.join("demo-pool.toml");
    let text = std::fs::read_to_string(&pool).unwrap();
    assert!(
        !text.contains("lymphoma"),
        "the held-out task is not in the pool"
    );
    let check = mtpath(&[
        "pool",
        "check",
        s(&pool),
        "--out",
        s(&dir.path().join("s.csv")),
    ]);
    assert_ok(&check);

    // A budget too small for the evaluation says so, and what would fit.
    let o = mtpath(&[
        "demo",
        "--data",
        s(&data),
        "--out",
        s(&dir.path().join("tiny")),
        "--budget",
        "20s",
        "--size",
        "32",
        "--batch",
        "8",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--budget 20s") && err.contains("at least"),
        "{err}"
    );

    // A budget that fits more than --max-iters runs the recipe's length, and says so.
    let capped = dir.path().join("capped");
    let o = mtpath(&[
        "demo",
        "--data",
        s(&data),
        "--out",
        s(&capped),
        "--budget",
        "3h",
        "--max-iters",
        "3",
        "--seeds",
        "0",
        "--size",
        "32",
        "--batch",
        "8",
    ]);
    assert_ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--max-iters 3"), "{err}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(capped.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["config"]["iters"], 3, "{record}");

    // Without data, the demo says how to get some.
    let o = mtpath(&["demo", "--data", s(&dir.path().join("nothing-here"))]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--data") && err.contains("manifest.csv"),
        "{err}"
    );
}
