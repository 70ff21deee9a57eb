//! `mtpath pool check` end to end on a temporary pool of real tasks.

mod common;

use common::mtpath;
use std::collections::BTreeMap;
use std::path::Path;

use mtpath_shared::testdata::data_dir;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn pool_file(dir: &Path, tasks: &[&Path], seed: u64) -> String {
    let mut t = format!("seed = {seed}\n");
    for p in tasks {
        t.push_str(&format!("[[task]]\npath = {:?}\n", p.to_str().unwrap()));
    }
    t.push_str("[train]\niters = 3\n");
    let file = dir.join("mypool.toml");
    std::fs::write(&file, t).unwrap();
    file.to_str().unwrap().to_string()
}

/// (task, path, label, group, split) rows.
fn read_splits(path: &Path) -> Vec<[String; 5]> {
    let mut r = csv::Reader::from_path(path).unwrap();
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        ["task", "path", "label", "group", "split"]
    );
    r.records()
        .map(|x| {
            let x = x.unwrap();
            [0, 1, 2, 3, 4].map(|i| x[i].to_string())
        })
        .collect()
}

#[test]
fn pool_check_prints_the_table_and_writes_splits() {
    let dir = tempfile::tempdir().unwrap();
    let tasks = ["lymphoma", "tcga-luad-lusc", "nct-crc-samples"].map(|t| data_dir().join(t));
    let pool = pool_file(dir.path(), &tasks.each_ref().map(|p| p.as_path()), 0);
    let out = mtpath(&["pool", "check", &pool]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));

    // The table: header, one row per task with images, classes, groups, split sizes, size.
    let lines: Vec<&str> = stdout.lines().collect();
    for col in [
        "task",
        "images",
        "classes",
        "groups",
        "train",
        "val",
        "test",
        "image size",
        "unreadable",
    ] {
        assert!(lines[0].contains(col), "{}", lines[0]);
    }
    let row = |name: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}:\n{stdout}"))
            .split_whitespace()
            .collect()
    };
    let ly = row("lymphoma");
    assert_eq!(&ly[1..4], ["374", "3", "374"]);
    assert_eq!(ly[7], "417x312");
    assert_eq!(ly[8], "0");
    let n: usize = ly[4..7].iter().map(|x| x.parse::<usize>().unwrap()).sum();
    assert_eq!(n, 374);
    let tc = row("tcga-luad-lusc");
    assert_eq!(&tc[1..7], ["190", "2", "4", "130", "0", "60"]);
    assert_eq!(
        &row("nct-crc-samples")[1..8],
        ["9", "9", "9", "9", "0", "0", "224x224"]
    );
    assert!(stdout.contains("lymphoma: cll 113 ("), "{stdout}");
    assert!(
        stdout.contains("tcga-luad-lusc: class `luad` has no val samples"),
        "{stdout}"
    );
    assert!(!stdout.contains("unreadable files"), "{stdout}");

    // The splits: default name beside the pool file, every image once, given test honoured,
    // groups on one side.
    let splits = dir.path().join("mypool.splits.csv");
    assert!(stdout.contains(&splits.display().to_string()), "{stdout}");
    let rows = read_splits(&splits);
    assert_eq!(rows.len(), 374 + 190 + 9);
    let mut group_side: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in &rows {
        let prev = group_side.insert((r[0].clone(), r[3].clone()), r[4].clone());
        assert!(
            prev.is_none_or(|p| p == r[4]),
            "group {:?} crosses splits",
            r
        );
    }
    let tcga_test: Vec<&[String; 5]> = rows
        .iter()
        .filter(|r| r[0] == "tcga-luad-lusc" && r[4] == "test")
        .collect();
    assert_eq!(tcga_test.len(), 60);
    assert!(
        tcga_test.iter().all(|r| r[1].contains("/test_")),
        "{tcga_test:?}"
    );

    // --out, and the same seed gives the same file.
    let other = dir.path().join("again.csv");
    let out = mtpath(&["pool", "check", &pool, "--out", other.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(&splits).unwrap(),
        std::fs::read(&other).unwrap()
    );
}

#[test]
fn pool_check_bad_image_fails_naming_it_and_skip_bad_lists_it() {
    let dir = tempfile::tempdir().unwrap();
    let task = dir.path().join("mini");
    let src = data_dir().join("lymphoma/images");
    let mut manifest = String::from("path,label,group,split\n");
    for (class, files) in [
        ("cll", ["cll_0", "cll_1", "cll_2"]),
        ("mcl", ["mcl_252", "mcl_253", "mcl_254"]),
    ] {
        std::fs::create_dir_all(task.join(class)).unwrap();
        for f in files {
            let rel = format!("{class}/{f}.jpg");
            std::fs::copy(src.join(&rel), task.join(&rel)).unwrap();
            manifest.push_str(&format!("{rel},{class},,\n"));
        }
    }
    let bytes = std::fs::read(task.join("cll/cll_0.jpg")).unwrap();
    std::fs::write(task.join("cll/cut.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    manifest.push_str("cll/cut.jpg,cll,,\n");
    std::fs::write(task.join("manifest.csv"), manifest).unwrap();
    let pool = pool_file(dir.path(), &[&task], 1);

    let out = mtpath(&["pool", "check", &pool]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cll/cut.jpg") && stderr.contains("line 8"),
        "{stderr}"
    );
    assert!(stderr.contains("--skip-bad"), "{stderr}");
    assert!(!dir.path().join("mypool.splits.csv").exists());

    let out = mtpath(&["pool", "check", &pool, "--skip-bad"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("unreadable files, skipped (1)"), "{stdout}");
    assert!(stdout.contains("cll/cut.jpg"), "{stdout}");
    let rows = read_splits(&dir.path().join("mypool.splits.csv"));
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r[1] != "cll/cut.jpg"));
}

#[test]
fn pool_check_bad_pool_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let out = mtpath(&["pool", "check", missing.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nope.toml"),
        "{}",
        text(&out.stderr)
    );

    let file = dir.path().join("typo.toml");
    std::fs::write(&file, "[[task]]\npath = \"x\"\ncorp = \"resize\"\n").unwrap();
    let out = mtpath(&["pool", "check", file.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("typo.toml") && stderr.contains("`corp`"),
        "{stderr}"
    );

    std::fs::write(&file, "[[task]]\npath = \"no-such-folder\"\n").unwrap();
    let out = mtpath(&["pool", "check", file.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no-such-folder") && stderr.contains("does not exist"),
        "{stderr}"
    );
}
