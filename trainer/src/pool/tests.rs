//! Pool tests: the pool file, bad input (each case names the file; `skip_bad` skips and
//! reports it), and splits of the real tasks (no leakage, stratified, seeded).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use mtpath_shared::testdata::data_dir;

use super::*;

const REAL_TASKS: [&str; 7] = [
    "idc-breast",
    "lbc-pap",
    "lc25000-lung",
    "lymphoma",
    "nct-crc-samples",
    "pbc-blood",
    "tcga-luad-lusc",
];

fn opts(skip_bad: bool, check: ImageCheck) -> LoadOptions {
    LoadOptions { skip_bad, check }
}

fn write_png(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]))
        .save(path)
        .unwrap();
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG whose header claims `w` x `h` (the pixel data is a stub: only the header is valid).
fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(b"IHDR", &ihdr);
    chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0, 0, 0, 1, 0, 1]);
    chunk(b"IEND", &[]);
    out
}

/// A task folder with a manifest: two classes `a` and `b` with three good images each, plus
/// `extra` rows (path,label,group,split) appended verbatim.
fn manifest_task(dir: &Path, extra: &[&str]) -> PathBuf {
    let root = dir.join("task");
    let mut m = String::from("path,label,group,split\n");
    for c in ["a", "b"] {
        for i in 0..3 {
            let rel = format!("{c}/{i}.png");
            write_png(&root.join(&rel), 16, 12);
            m.push_str(&format!("{rel},{c},,\n"));
        }
    }
    for row in extra {
        m.push_str(row);
        m.push('\n');
    }
    std::fs::write(root.join("manifest.csv"), m).unwrap();
    root
}

fn load_one(root: &Path, o: LoadOptions) -> anyhow::Result<Pool> {
    Pool::load(&PoolConfig::from_task_dirs(&[root.to_path_buf()], 0), &o)
}

fn err_of(r: anyhow::Result<Pool>) -> String {
    format!("{:#}", r.expect_err("expected an error"))
}

// ---------------------------------------------------------------- pool file

#[test]
fn config_defaults_relative_paths_and_train_table() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pool.toml");
    std::fs::write(
        &file,
        r#"
[[task]]
path = "data/one"

[[task]]
path = "/abs/two"
name = "second"
weight = 2.5
crop = "random-resized-crop"
split = { train = 0.8, val = 0.2, test = 0.0 }

[train]
epochs = 10
lr = { base = 0.1 }
"#,
    )
    .unwrap();
    let c = PoolConfig::from_file(&file).unwrap();
    assert_eq!(c.seed, 0);
    assert_eq!(c.tasks.len(), 2);
    let t = &c.tasks[0];
    assert_eq!(t.path, dir.path().join("data/one"));
    assert_eq!(t.task_name(), "one");
    assert_eq!(
        (t.weight, t.crop, t.split),
        (1.0, CropPolicy::RandomCrop, SplitFractions::default())
    );
    assert_eq!(SplitFractions::default().train, 0.7);
    let t = &c.tasks[1];
    assert_eq!(t.path, PathBuf::from("/abs/two"));
    assert_eq!(t.task_name(), "second");
    assert_eq!(t.weight, 2.5);
    assert_eq!(t.crop, CropPolicy::RandomResizedCrop);
    assert_eq!(t.split.train, 0.8);
    let train = c.train.expect("[train] kept");
    assert_eq!(train["epochs"].as_integer(), Some(10));
    assert_eq!(train["lr"]["base"].as_float(), Some(0.1));

    let c = PoolConfig::from_task_dirs(&[PathBuf::from("x/y")], 3);
    assert_eq!((c.seed, c.tasks[0].weight), (3, 1.0));
    assert!(c.train.is_none());
}

#[test]
fn config_unknown_keys_are_rejected_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pool.toml");
    for (text, key) in [
        ("sed = 1\n[[task]]\npath = \"a\"\n", "sed"),
        ("[[task]]\npath = \"a\"\nwieght = 2\n", "wieght"),
        (
            "[[task]]\npath = \"a\"\nsplit = { train = 0.8, vall = 0.2, test = 0 }\n",
            "vall",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let e = format!("{:#}", PoolConfig::from_file(&file).unwrap_err());
        assert!(e.contains(&format!("`{key}`")), "{e}");
        assert!(e.contains(&file.display().to_string()), "{e}");
    }
}

#[test]
fn config_bad_values_are_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pool.toml");
    for (text, needle) in [
        ("[[task]]\npath = \"a\"\nweight = 0\n", "weight"),
        ("[[task]]\npath = \"a\"\nweight = -1\n", "weight"),
        (
            "[[task]]\npath = \"a\"\nsplit = { train = 0.8, val = 0.3, test = 0 }\n",
            "sum to 1",
        ),
        (
            "[[task]]\npath = \"a\"\nsplit = { train = 0, val = 0.5, test = 0.5 }\n",
            "train",
        ),
        (
            "[[task]]\npath = \"a\"\nsplit = { train = 1.2, val = -0.2, test = 0 }\n",
            ">= 0",
        ),
        ("[[task]]\npath = \"a\"\ncrop = \"zoom\"\n", "zoom"),
        ("seed = 1\n", "task"),
        ("task = []\n", "no tasks"),
        (
            "[[task]]\npath = \"x/a\"\n[[task]]\npath = \"y/a\"\n",
            "two tasks are named `a`",
        ),
        ("[[task]\npath = \"a\"\n", "TOML"),
        ("[[task]]\npath = 3\n", "path"),
    ] {
        std::fs::write(&file, text).unwrap();
        let e = format!("{:#}", PoolConfig::from_file(&file).unwrap_err());
        assert!(e.contains(&file.display().to_string()), "{text}: {e}");
        assert!(e.contains(needle), "{text}: {e}");
    }
    let e = format!(
        "{:#}",
        PoolConfig::from_file(&dir.path().join("nope.toml")).unwrap_err()
    );
    assert!(e.contains("nope.toml"), "{e}");
}

// ---------------------------------------------------------------- bad input

/// Each per-image problem: an error naming the file and the manifest line without
/// `skip_bad`; skipped and reported with it.
#[test]
fn bad_images_are_named_and_skipped_with_skip_bad() {
    let real = data_dir().join("lymphoma/images/cll/cll_0.jpg");
    let jpeg = std::fs::read(&real).unwrap();
    type Setup = fn(&Path, &[u8]);
    let cases: [(&str, &str, Setup, &str); 11] = [
        ("missing", "a/missing.png,a,,", |_, _| {}, "file not found"),
        (
            "zero",
            "a/zero.png,a,,",
            |r, _| std::fs::write(r.join("a/zero.png"), b"").unwrap(),
            "0 bytes",
        ),
        (
            "truncated",
            "a/trunc.jpg,a,,",
            |r, j| std::fs::write(r.join("a/trunc.jpg"), &j[..j.len() / 2]).unwrap(),
            "trunc",
        ),
        (
            "text",
            "a/text.jpg,a,,",
            |r, _| std::fs::write(r.join("a/text.jpg"), b"hello, not an image").unwrap(),
            "not",
        ),
        (
            "tiny",
            "a/tiny.png,a,,",
            |r, _| write_png(&r.join("a/tiny.png"), 4, 30),
            "4x30",
        ),
        (
            "wide",
            "a/wide.png,a,,",
            |r, _| std::fs::write(r.join("a/wide.png"), png_header_only(40000, 8)).unwrap(),
            "40000x8",
        ),
        (
            "huge",
            "a/huge.png,a,,",
            |r, _| std::fs::write(r.join("a/huge.png"), png_header_only(20000, 20000)).unwrap(),
            "2^28",
        ),
        (
            "dotdot",
            "../outside.png,a,,",
            |r, _| write_png(&r.join("../outside.png"), 16, 16),
            "leaves the task folder",
        ),
        (
            "absolute",
            "/etc/hostname,a,,",
            |_, _| {},
            "leaves the task folder",
        ),
        ("nolabel", "a/0.png,,,", |_, _| {}, "no label"),
        (
            "duplicate",
            "./a/1.png,a,,",
            |_, _| {},
            "same image as line 3",
        ),
    ];
    for check in [ImageCheck::Header, ImageCheck::Decode] {
        for (what, row, setup, needle) in cases {
            if what == "truncated" && check == ImageCheck::Header {
                continue; // a header check does not see a cut-off body
            }
            let dir = tempfile::tempdir().unwrap();
            let root = manifest_task(dir.path(), &[row]);
            setup(&root, &jpeg);
            let e = err_of(load_one(&root, opts(false, check)));
            let file = row.split(',').next().unwrap().trim_start_matches("./");
            assert!(e.contains(file), "{what}: {e}");
            assert!(e.contains("manifest.csv line 8"), "{what}: {e}");
            assert!(e.contains(needle), "{what} ({check:?}): {e}");
            assert!(e.contains("--skip-bad"), "{what}: {e}");

            let pool =
                load_one(&root, opts(true, check)).unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_eq!(pool.skipped.len(), 1, "{what}");
            assert!(
                pool.skipped[0].reason.contains(needle),
                "{what}: {:?}",
                pool.skipped[0]
            );
            assert!(
                pool.skipped[0].path.to_string_lossy().contains(file),
                "{what}"
            );
            assert_eq!(pool.tasks[0].len(), 6, "{what}");
            let report = check::render(&pool);
            assert!(report.contains("unreadable files, skipped (1)"), "{report}");
            assert!(report.contains(file), "{report}");
        }
    }
}

#[test]
fn many_bad_images_list_ten_then_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<String> = (0..15).map(|i| format!("a/gone{i}.png,a,,")).collect();
    let rows: Vec<&str> = rows.iter().map(|s| s.as_str()).collect();
    let root = manifest_task(dir.path(), &rows);
    let e = err_of(load_one(&root, opts(false, ImageCheck::None)));
    assert!(e.contains("15 bad images"), "{e}");
    assert!(e.contains("gone9.png") && !e.contains("gone10.png"), "{e}");
    assert!(e.contains("and 5 more"), "{e}");
    let pool = load_one(&root, opts(true, ImageCheck::None)).unwrap();
    assert_eq!(pool.skipped.len(), 15);
}

#[test]
fn structural_problems_are_errors_even_with_skip_bad() {
    let dir = tempfile::tempdir().unwrap();
    let check = |root: &Path, needles: &[&str]| {
        for skip in [false, true] {
            let e = err_of(load_one(root, opts(skip, ImageCheck::Header)));
            for n in needles {
                assert!(e.contains(n), "{n}: {e}");
            }
        }
    };
    // A folder that does not exist.
    let missing = dir.path().join("no-such-task");
    check(&missing, &["no-such-task", "does not exist"]);

    // One class.
    let root = dir.path().join("one");
    write_png(&root.join("a/0.png"), 16, 16);
    std::fs::write(
        root.join("manifest.csv"),
        "path,label,group,split\na/0.png,a,,\n",
    )
    .unwrap();
    check(&root, &["one/manifest.csv", "only one class"]);

    // One class left after skipping: an error with skip_bad too.
    std::fs::write(
        root.join("manifest.csv"),
        "path,label,group,split\na/0.png,a,,\nb/gone.png,b,,\n",
    )
    .unwrap();
    let e = err_of(load_one(&root, opts(true, ImageCheck::Header)));
    assert!(e.contains("only one class"), "{e}");

    // Empty task (header only).
    std::fs::write(root.join("manifest.csv"), "path,label,group,split\n").unwrap();
    check(&root, &["one/manifest.csv", "no images"]);

    // Missing and unknown columns.
    std::fs::write(root.join("manifest.csv"), "path,group,split\na/0.png,,\n").unwrap();
    check(&root, &["one/manifest.csv", "missing column `label`"]);
    std::fs::write(root.join("manifest.csv"), "path,label,gruop\na/0.png,a,x\n").unwrap();
    check(&root, &["one/manifest.csv", "unknown column `gruop`"]);

    // A row with the wrong number of fields.
    std::fs::write(
        root.join("manifest.csv"),
        "path,label,group,split\na/0.png,a\n",
    )
    .unwrap();
    check(&root, &["one/manifest.csv", "line 2"]);

    // A group given both splits.
    let root = manifest_task(
        &dir.path().join("g"),
        &["c/0.png,c,p1,train", "c/1.png,c,p1,test"],
    );
    write_png(&root.join("c/0.png"), 16, 16);
    write_png(&root.join("c/1.png"), 16, 16);
    check(&root, &["group `p1`", "c/0.png", "c/1.png", "split column"]);

    // An image folder with no class subfolders, and one with one class.
    let root = dir.path().join("flat");
    write_png(&root.join("0.png"), 16, 16);
    check(&root, &["flat", "no images"]);
    write_png(&root.join("only/0.png"), 16, 16);
    check(&root, &["flat", "only one class"]);
}

#[test]
fn duplicate_task_names_are_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let a = manifest_task(&dir.path().join("x"), &[]);
    let b = manifest_task(&dir.path().join("y"), &[]);
    let e = format!(
        "{:#}",
        Pool::load(
            &PoolConfig::from_task_dirs(&[a.clone(), b], 0),
            &LoadOptions::default()
        )
        .unwrap_err()
    );
    assert!(e.contains("two tasks are named `task`"), "{e}");
    // One folder twice, even under two names, is one task's images under two heads.
    let mut c = PoolConfig::from_task_dirs(&[a.clone(), a], 0);
    c.tasks[1].name = Some("other".into());
    let e = format!("{:#}", Pool::load(&c, &LoadOptions::default()).unwrap_err());
    assert!(e.contains("are the same folder"), "{e}");
}

#[test]
fn image_folder_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folders");
    for (rel, w) in [
        ("b/x/2.png", 20),
        ("a/1.png", 10),
        ("b/1.PNG", 30),
        ("a/0.jpg", 10),
    ] {
        write_png(&root.join(rel), w, 9);
    }
    std::fs::write(root.join("a/notes.txt"), "ignored").unwrap();
    std::fs::write(root.join("a/.hidden.png"), "ignored").unwrap();
    std::fs::write(root.join("README"), "ignored").unwrap();
    let pool = load_one(&root, opts(false, ImageCheck::Decode)).unwrap();
    let t = &pool.tasks[0];
    assert_eq!(t.name, "folders");
    assert_eq!(t.classes, ["a", "b"]);
    let mut all: Vec<(String, u32, String)> = t
        .samples()
        .map(|(_, s)| (s.rel.clone(), s.label, s.group.clone()))
        .collect();
    all.sort();
    let want = [
        ("a/0.jpg", 0),
        ("a/1.png", 0),
        ("b/1.PNG", 1),
        ("b/x/2.png", 1),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|(r, l)| (r.to_string(), *l, r.to_string()))
        .collect();
    assert_eq!(all, want);
    assert_eq!(t.image_sizes, Some(((10, 9), (30, 9))));
    assert!(t.samples().all(|(_, s)| s.path == root.join(&s.rel)));

    // A corrupt image in a class folder names the file.
    std::fs::write(root.join("b/bad.png"), b"junk").unwrap();
    let e = err_of(load_one(&root, opts(false, ImageCheck::Header)));
    assert!(
        e.contains("b/bad.png") && e.contains("class folder `b`"),
        "{e}"
    );
    let pool = load_one(&root, opts(true, ImageCheck::Header)).unwrap();
    assert_eq!(pool.skipped.len(), 1);
}

#[test]
fn manifest_samples_and_splits_csv() {
    let dir = tempfile::tempdir().unwrap();
    let root = manifest_task(dir.path(), &["c/p.png,\"c, with comma\",grp,"]);
    write_png(&root.join("c/p.png"), 16, 16);
    let pool = load_one(&root, opts(false, ImageCheck::Decode)).unwrap();
    let t = &pool.tasks[0];
    assert_eq!(t.classes, ["a", "b", "c, with comma"]);
    assert_eq!(t.len(), 7);
    assert_eq!(t.image_sizes, Some(((16, 12), (16, 16))));
    let s = t.samples().find(|(_, s)| s.rel == "a/0.png").unwrap().1;
    assert_eq!((s.label, s.group.as_str()), (0, "a/0.png"));
    assert_eq!(s.path, root.join("a/0.png"));
    assert_eq!(pool.task_index("task"), Some(0));
    assert_eq!(pool.task_index("nope"), None);
    assert_eq!(t.split(Split::Train).len(), t.train.len());

    let out = dir.path().join("splits.csv");
    pool.write_splits(&out).unwrap();
    let mut r = csv::Reader::from_path(&out).unwrap();
    assert_eq!(
        r.headers().unwrap().iter().collect::<Vec<_>>(),
        ["task", "path", "label", "group", "split"]
    );
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    assert_eq!(rows.len(), 7);
    let c = rows.iter().find(|r| &r[1] == "c/p.png").unwrap();
    assert_eq!((&c[0], &c[2], &c[3]), ("task", "c, with comma", "grp"));
    assert!(rows
        .iter()
        .all(|r| ["train", "val", "test"].contains(&&r[4])));
    // Nothing but the splits file is left beside it (atomic write).
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

// ---------------------------------------------------------------- real tasks

fn real_pool(tasks: &[&str], seed: u64) -> Pool {
    let dirs: Vec<PathBuf> = tasks.iter().map(|t| data_dir().join(t)).collect();
    Pool::load(
        &PoolConfig::from_task_dirs(&dirs, seed),
        &opts(false, ImageCheck::None),
    )
    .unwrap()
}

/// (path, label, group, split) rows of a real manifest.
fn manifest_rows(task: &str) -> Vec<[String; 4]> {
    let mut r = csv::Reader::from_path(data_dir().join(task).join("manifest.csv")).unwrap();
    r.records()
        .map(|x| {
            let x = x.unwrap();
            [0, 1, 2, 3].map(|i| x[i].to_string())
        })
        .collect()
}

#[test]
fn real_tasks_split_without_leakage_and_stratified() {
    let pool = real_pool(&REAL_TASKS, 0);
    assert!(pool.skipped.is_empty());
    for t in &pool.tasks {
        let rows = manifest_rows(&t.name);
        // Every manifest row in exactly one split.
        let mut seen: BTreeMap<&str, Split> = BTreeMap::new();
        for (s, x) in t.samples() {
            assert!(
                seen.insert(&x.rel, s).is_none(),
                "{}: {} twice",
                t.name,
                x.rel
            );
        }
        assert_eq!(seen.len(), rows.len(), "{}", t.name);
        // No group on two sides (the manifest's groups; empty = the image alone).
        let mut side: BTreeMap<&str, Split> = BTreeMap::new();
        for row in &rows {
            let s = seen[row[0].as_str()];
            if !row[2].is_empty() {
                let first = *side.entry(&row[2]).or_insert(s);
                assert_eq!(first, s, "{}: group {} crosses splits", t.name, row[2]);
            }
        }
        // Labels as in the manifest.
        for (_, x) in t.samples() {
            let row = rows.iter().find(|r| r[0] == x.rel).unwrap();
            assert_eq!(t.classes[x.label as usize], row[1]);
        }
        // Stratified where groups allow: classes spread over >= 20 groups.
        for (l, class) in t.classes.iter().enumerate() {
            let groups: BTreeSet<&str> = rows
                .iter()
                .filter(|r| &r[1] == class)
                .map(|r| {
                    if r[2].is_empty() {
                        r[0].as_str()
                    } else {
                        r[2].as_str()
                    }
                })
                .collect();
            let n = |s: Split| t.split(s).iter().filter(|x| x.label == l as u32).count();
            let total = (n(Split::Train) + n(Split::Val) + n(Split::Test)) as f64;
            assert!(
                n(Split::Train) > 0,
                "{}: class {class} has no train sample",
                t.name
            );
            if groups.len() >= 20 {
                for (s, f) in [(Split::Train, 0.7), (Split::Val, 0.15), (Split::Test, 0.15)] {
                    let got = n(s) as f64 / total;
                    assert!((got - f).abs() < 0.05, "{} {class} {s:?}: {got:.3}", t.name);
                }
            }
        }
    }
    // tcga-luad-lusc: the given test rows are the test split, its train rows train or val.
    let t = &pool.tasks[pool.task_index("tcga-luad-lusc").unwrap()];
    let given_test: BTreeSet<String> = manifest_rows("tcga-luad-lusc")
        .into_iter()
        .filter(|r| r[3] == "test")
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(given_test.len(), 60);
    let test: BTreeSet<String> = t.test.iter().map(|x| x.rel.clone()).collect();
    assert_eq!(test, given_test);
}

#[test]
fn same_seed_same_splits_other_seed_other_splits() {
    let tasks = ["lymphoma", "pbc-blood", "lbc-pap"];
    let key = |p: &Pool| -> Vec<Vec<(Split, String)>> {
        p.tasks
            .iter()
            .map(|t| t.samples().map(|(s, x)| (s, x.rel.clone())).collect())
            .collect()
    };
    let a = key(&real_pool(&tasks, 5));
    assert_eq!(a, key(&real_pool(&tasks, 5)));
    let b = key(&real_pool(&tasks, 6));
    assert_ne!(a[0], b[0]);
    assert_ne!(a[1], b[1]);
}

#[test]
fn decode_check_of_real_tiff_and_jpeg_tasks() {
    let pool = Pool::load(
        &PoolConfig::from_task_dirs(
            &[
                data_dir().join("nct-crc-samples"),
                data_dir().join("tcga-luad-lusc"),
            ],
            0,
        ),
        &opts(false, ImageCheck::Decode),
    )
    .unwrap();
    assert_eq!(pool.tasks[0].image_sizes, Some(((224, 224), (224, 224))));
    assert_eq!(pool.tasks[1].image_sizes, Some(((256, 256), (256, 256))));
    assert_eq!(pool.tasks[0].classes.len(), 9);
    let report = check::render(&pool);
    assert!(
        report.contains("class `luad` has no val samples"),
        "{report}"
    );
}
