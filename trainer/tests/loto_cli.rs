//! `mtpath loto` end to end on real tasks at a tiny size: two pre-training combinations
//! without the held-out tasks, the comparison against random init and a single-task network,
//! the ranking, the plots, and a rerun that reuses every finished run.

mod common;

use common::{assert_ok, mtpath, s};
use std::path::{Path, PathBuf};

use mtpath_shared::testdata::data_dir;

fn pool_file(dir: &Path) -> PathBuf {
    let mut text = String::from("seed = 1\n");
    for t in ["lbc-pap", "pbc-blood", "tcga-luad-lusc"] {
        text.push_str(&format!(
            "[[task]]\npath = \"{}\"\ncrop = \"random-crop\"\n",
            data_dir().join(t).display()
        ));
    }
    text.push_str(
        "[train]\nsize = 32\nbatch = 8\niters = 4\nval_every = 2\nval_max_per_task = 16\n",
    );
    let p = dir.join("pool.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// A JSON file the run wrote.
fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The model labels of a comparison.json, in order.
fn model_names(cmp: &serde_json::Value) -> Vec<&str> {
    cmp["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect()
}

/// Every run's balanced accuracy in one cell of a comparison.json.
fn balanced_accuracies<'a>(
    cmp: &'a serde_json::Value,
    model: &str,
    protocol: &str,
    task: &str,
) -> &'a Vec<serde_json::Value> {
    let cell = cmp["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["model"] == model && c["protocol"] == protocol && c["task"] == task)
        .unwrap_or_else(|| panic!("no {model} {protocol} {task} cell"));
    let bacc = cell["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["metric"] == "balanced_accuracy")
        .unwrap();
    bacc["values"].as_array().unwrap()
}

#[test]
fn loto_pretrains_a_grid_compares_baselines_ranks_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path());
    let out = dir.path().join("loto");
    let args = [
        "loto",
        "--pool",
        s(&pool),
        "--hold-out",
        "tcga-luad-lusc,lbc-pap",
        "--grid",
        "lr=0.01,0.05",
        "--seeds",
        "2",
        "--single-task-epochs",
        "1",
        "--out",
        s(&out),
    ];
    let o = mtpath(&args);
    assert_ok(&o);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        stdout.contains("best pre-training combination: multi-task [lr="),
        "{stdout}"
    );

    // Two pre-training runs, neither trained on the held-out task.
    for run in ["pretrain/00", "pretrain/01"] {
        let record = read_json(&out.join(run).join("run.json"));
        let heads: Vec<&str> = record["heads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["name"].as_str().unwrap())
            .collect();
        assert_eq!(heads, ["pbc-blood"], "{run}");
    }
    let lrs: Vec<f64> = ["00", "01"]
        .iter()
        .map(|r| {
            read_json(&out.join("pretrain").join(r).join("run.json"))["config"]["lr"]
                .as_f64()
                .unwrap()
        })
        .collect();
    assert_eq!(lrs, [0.01, 0.05]);

    // Every model has linear and kNN cells on the held-out task with both seeds' values.
    let cmp = read_json(&out.join("held-out/comparison.json"));
    let models = model_names(&cmp);
    assert_eq!(
        models,
        [
            "multi-task [lr=0.01]",
            "multi-task [lr=0.05]",
            "random init",
            "single-task"
        ]
    );
    for m in &models {
        for p in ["linear", "knn"] {
            let values = balanced_accuracies(&cmp, m, p, "tcga-luad-lusc");
            assert_eq!(values.len(), 2, "{m} {p}");
            assert!(values
                .iter()
                .all(|v| (0.0..=1.0).contains(&v.as_f64().unwrap())));
        }
    }
    // The ranking lists every model once, by average rank (ascending).
    let loto = read_json(&out.join("loto.json"));
    let ranks: Vec<f64> = loto["ranking"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["average_rank"].as_f64().unwrap())
        .collect();
    // Selection ranks the candidates (two combinations and the random trunk; the single-task
    // baseline is not one) on the held-out validation splits, never on test.
    assert_eq!(ranks.len(), 3);
    assert!(ranks.windows(2).all(|w| w[0] <= w[1]), "{ranks:?}");
    // Average ranks of 3 models over 2 criteria sum to 1+2+3.
    assert!((ranks.iter().sum::<f64>() - 6.0).abs() < 1e-9, "{ranks:?}");
    assert_eq!(loto["selection"], "held-out-val/comparison.json");
    let val = read_json(&out.join("held-out-val/comparison.json"));
    assert_eq!(val["models"].as_array().unwrap().len(), 3);
    let md = std::fs::read_to_string(out.join("loto.md")).unwrap();
    assert!(
        md.contains("| 1 |") && md.contains("## linear") && md.contains("## own head"),
        "{md}"
    );
    for plot in [
        "held-out-linear.png",
        "held-out-knn.png",
        "held-out-own-head.svg",
    ] {
        assert!(out.join("held-out/plots").join(plot).is_file(), "{plot}");
    }
    assert!(out.join("pretrain/00/plots/training.png").is_file());

    // Rerunning reuses the finished runs: their metrics are untouched and no step is trained.
    let kept = [
        "pretrain/01/metrics.csv",
        "held-out/single-task/tcga-luad-lusc/seed1-lr0.01/metrics.csv",
    ];
    let before: Vec<Vec<u8>> = kept
        .iter()
        .map(|k| std::fs::read(out.join(k)).unwrap())
        .collect();
    let o = mtpath(&args);
    assert_ok(&o);
    for (k, b) in kept.iter().zip(&before) {
        assert_eq!(
            &std::fs::read(out.join(k)).unwrap(),
            b,
            "{k} was trained again"
        );
    }
}

#[test]
fn loto_names_unknown_tasks_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path());
    let out = dir.path().join("loto");
    let o = mtpath(&[
        "loto",
        "--pool",
        s(&pool),
        "--hold-out",
        "nope",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("nope") && err.contains("pbc-blood"), "{err}");
    let o = mtpath(&[
        "loto",
        "--pool",
        s(&pool),
        "--hold-out",
        "lbc-pap",
        "--grid",
        "learning_rate=1",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("learning_rate"), "{err}");
    // Selection never looks at test: holding out only tasks without a validation split
    // (tcga-luad-lusc's slides come as train/test) is refused before any training.
    let o = mtpath(&[
        "loto",
        "--pool",
        s(&pool),
        "--hold-out",
        "tcga-luad-lusc",
        "--out",
        s(&out),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("validation split"), "{err}");
    assert!(!out.join("pretrain").exists());
}

#[test]
fn loto_one_at_a_time_with_replicate_seeds_pools_their_scores() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool_file(dir.path());
    let out = dir.path().join("loto");
    let o = mtpath(&[
        "loto",
        "--pool",
        s(&pool),
        "--hold-out",
        "tcga-luad-lusc,lbc-pap",
        "--design",
        "one-at-a-time",
        // 0 is the base value: no run of its own.
        "--grid",
        "label_smoothing=0,0.1",
        "--grid",
        "stain_jitter=0.05",
        "--pretrain-seeds",
        "3,4",
        "--seeds",
        "2",
        "--protocol",
        "linear",
        "--single-task-epochs",
        "0",
        "--out",
        s(&out),
    ]);
    assert_ok(&o);
    // Three recipes (base, label smoothing alone, stain jitter alone), two seeds each.
    let runs = [
        ("00-seed3", 3, 0.0, 0.0),
        ("00-seed4", 4, 0.0, 0.0),
        ("01-seed3", 3, 0.1, 0.0),
        ("01-seed4", 4, 0.1, 0.0),
        ("02-seed3", 3, 0.0, 0.05),
        ("02-seed4", 4, 0.0, 0.05),
    ];
    for (run, seed, smoothing, stain) in runs {
        let rec = read_json(&out.join("pretrain").join(run).join("run.json"));
        let c = &rec["config"];
        assert_eq!(c["seed"].as_u64(), Some(seed), "{run}");
        assert!((c["label_smoothing"].as_f64().unwrap() - smoothing).abs() < 1e-9);
        assert!((c["stain_jitter"].as_f64().unwrap() - stain).abs() < 1e-6);
    }
    assert!(!out.join("pretrain/03-seed3").exists());
    // Replicates differ (another seed, another trunk).
    let trunk = |r: &str| {
        std::fs::read(out.join("pretrain").join(r).join("last/trunk.safetensors")).unwrap()
    };
    assert_ne!(trunk("00-seed3"), trunk("00-seed4"));
    let cmp = read_json(&out.join("held-out/comparison.json"));
    let models = model_names(&cmp);
    assert_eq!(
        models,
        [
            "multi-task [base]",
            "multi-task [label_smoothing=0.1]",
            "multi-task [stain_jitter=0.05]",
            "random init"
        ]
    );
    // A recipe's cell pools its two pre-training runs × two splits; random init has two.
    for (m, n) in [("multi-task [base]", 4), ("random init", 2)] {
        assert_eq!(
            balanced_accuracies(&cmp, m, "linear", "lbc-pap").len(),
            n,
            "{m}"
        );
    }
    let loto = read_json(&out.join("loto.json"));
    assert_eq!(loto["combinations"][1]["runs"][1], "pretrain/01-seed4");
    assert_eq!(loto["ranking"].as_array().unwrap().len(), 4);
}
