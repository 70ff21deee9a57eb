//! `mtpath eval` end to end: frozen features of real tasks, kNN over seeds, eva-style results.

mod common;

use common::mtpath;

use mtpath_shared::testdata::{data_dir, fixtures_dir};

#[test]
fn knn_over_seeds_writes_results_and_reuses_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let weights = fixtures_dir().join("resnet18.safetensors");
    let lymphoma = data_dir().join("lymphoma");
    let tcga = data_dir().join("tcga-luad-lusc");
    let args = [
        "eval",
        "--weights",
        weights.to_str().unwrap(),
        "--task",
        lymphoma.to_str().unwrap(),
        "--task",
        tcga.to_str().unwrap(),
        "--seeds",
        "3",
        "--size",
        "64",
        "--protocol",
        "knn",
        "--out",
        out.to_str().unwrap(),
    ];
    let o = mtpath(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["protocol"], "knn");
    let results = json["results"].as_array().unwrap();
    // lymphoma: 3 metrics (no AUC: 3 classes); tcga: 4 (binary).
    assert_eq!(results.len(), 7);
    for r in results {
        let values: Vec<f64> = r["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(values.len(), 3, "{r}");
        let mean = values.iter().sum::<f64>() / 3.0;
        assert!((r["mean"].as_f64().unwrap() - mean).abs() < 1e-12);
        assert!(values.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    // tcga's test split is the source's (two held-out slides): the same for every seed.
    let runs = json["runs"].as_array().unwrap();
    let tcga_tests: Vec<u64> = runs
        .iter()
        .filter(|r| r["task"] == "tcga-luad-lusc")
        .map(|r| r["n_test"].as_u64().unwrap())
        .collect();
    assert_eq!(tcga_tests, vec![60, 60, 60]);
    // ImageNet-like fixture features separate lymphoma subtypes better than chance (1/3).
    let lym_bacc = results
        .iter()
        .find(|r| r["task"] == "lymphoma" && r["metric"] == "balanced_accuracy")
        .unwrap()["mean"]
        .as_f64()
        .unwrap();
    assert!(lym_bacc > 0.45, "lymphoma balanced accuracy {lym_bacc}");
    assert!(std::fs::read_to_string(out.join("results.md"))
        .unwrap()
        .contains("| lymphoma |"));
    // Plots: the per-task bars and a confusion matrix per task whose counts add up to the
    // test images of all seeds.
    for plot in [
        "metrics.svg",
        "metrics.png",
        "confusion-lymphoma.png",
        "confusion-tcga-luad-lusc.svg",
    ] {
        assert!(out.join("plots").join(plot).is_file(), "{plot} missing");
    }
    image::open(out.join("plots/metrics.png")).expect("a readable PNG");
    let svg = std::fs::read_to_string(out.join("plots/confusion-tcga-luad-lusc.svg")).unwrap();
    assert!(
        svg.contains("3 seeds summed") && svg.contains(">\nluad\n<"),
        "{svg}"
    );

    // A second run reads the cached features and gives the same results.
    let cached = std::fs::read_dir(out.join("cache")).unwrap().count();
    assert_eq!(cached, 2);
    let o = mtpath(&args);
    assert!(o.status.success());
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(again["results"], json["results"]);
}

#[test]
fn missing_weights_and_tasks_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let o = mtpath(&[
        "eval",
        "--weights",
        "/no/such/w.safetensors",
        "--task",
        data_dir().join("lymphoma").to_str().unwrap(),
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/w.safetensors"));
    let o = mtpath(&[
        "eval",
        "--weights",
        "random",
        "--task",
        "/no/such/task",
        "--out",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/no/such/task"));
}

#[test]
fn linear_and_svm_probes_choose_c_by_grouped_cross_validation() {
    let dir = tempfile::tempdir().unwrap();
    let weights = fixtures_dir().join("resnet18.safetensors");
    let lymphoma = data_dir().join("lymphoma");
    for protocol in ["linear", "svm"] {
        let out = dir.path().join(protocol);
        let o = mtpath(&[
            "eval",
            "--weights",
            weights.to_str().unwrap(),
            "--task",
            lymphoma.to_str().unwrap(),
            "--seeds",
            "2",
            "--size",
            "64",
            "--protocol",
            protocol,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap())
                .unwrap();
        assert_eq!(json["protocol"], protocol);
        for run in json["runs"].as_array().unwrap() {
            let c = run["c"].as_f64().unwrap();
            assert!([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0].contains(&c), "{run}");
            assert!(run["balanced_accuracy"].as_f64().unwrap() > 0.4, "{run}");
        }
    }
}

#[test]
fn eval_protocol_finetune_trains_per_task_and_seed_and_reports_like_the_probes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ft");
    let task = data_dir().join("tcga-luad-lusc");
    let o = mtpath(&[
        "eval",
        "--weights",
        "random",
        "--task",
        task.to_str().unwrap(),
        "--protocol",
        "finetune",
        "--lrs",
        "0.01",
        "--epochs",
        "1",
        "--seeds",
        "2",
        "--size",
        "32",
        "--batch",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["protocol"], "finetune");
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(
        runs.iter().all(|r| r["lr"] == 0.01 && r["n_test"] == 60),
        "{runs:?}"
    );
    for seed in 0..2 {
        let run = out.join(format!("finetune/tcga-luad-lusc/seed{seed}-lr0.01"));
        assert!(
            run.join("last/model.safetensors").is_file(),
            "{}",
            run.display()
        );
    }
    assert!(out.join("plots/confusion-tcga-luad-lusc.png").is_file());
    // An unknown protocol names the choices.
    let o = mtpath(&[
        "eval",
        "--weights",
        "random",
        "--task",
        task.to_str().unwrap(),
        "--protocol",
        "lasso",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("finetune") && err.contains("knn"), "{err}");
}

#[test]
fn finetune_picks_a_learning_rate_on_validation_and_scores_the_test_split() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ft");
    let weights = fixtures_dir().join("resnet18.safetensors");
    let task = data_dir().join("lymphoma");
    let o = mtpath(&[
        "finetune",
        "--weights",
        weights.to_str().unwrap(),
        "--task",
        task.to_str().unwrap(),
        "--epochs",
        "1",
        "--size",
        "32",
        "--batch",
        "16",
        "--lrs",
        "0.01,0.001",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["protocol"], "finetune");
    let run = &json["runs"][0];
    let lr = run["lr"].as_f64().unwrap();
    assert!(lr == 0.01 || lr == 0.001, "{run}");
    // Each learning rate trained its own run with a validated best checkpoint.
    for lr in ["0.01", "0.001"] {
        let best = out.join(format!("runs/seed0-lr{lr}/best/model.safetensors"));
        assert!(best.is_file(), "{}", best.display());
    }
    let n_test = run["n_test"].as_u64().unwrap();
    let confusion: u64 = run["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(confusion, n_test);
}
