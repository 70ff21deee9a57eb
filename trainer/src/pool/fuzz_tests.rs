//! Fuzz tests of the pool's user-file parsers (the manifest CSV and the pool TOML) with the
//! in-repo fuzzer (`mtpath_shared::fuzzing`; corpus in `fuzz/corpus/{manifest,pool}/`). No
//! input may panic or hang; problems are errors or skipped rows. (The trainer's own global
//! allocator stays in place, so allocation sizes are not tracked here; both parsers allocate
//! in proportion to their input.)

use std::path::Path;

use mtpath_shared::fuzzing::{fuzz, Target};

use super::config::PoolConfig;
use super::task::parse_manifest;

/// A manifest: its rows are entries or per-row problems, never a panic; every entry's path
/// stays inside the task folder.
fn manifest(bytes: &[u8]) -> Result<String, String> {
    let root = Path::new("/task");
    match parse_manifest(root, &root.join("manifest.csv"), bytes) {
        Ok((entries, problems)) => {
            if let Some(e) = entries.iter().find(|e| !e.path.starts_with(root)) {
                return Err(format!("entry {} leaves the task folder", e.path.display()));
            }
            Ok(format!(
                "ok {} entries {} problems",
                entries.len().min(3),
                problems.len().min(3)
            ))
        }
        Err(e) => Ok(format!("error: {e}")),
    }
}

/// A pool file: parsed and validated, or an error.
fn pool(bytes: &[u8]) -> Result<String, String> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok("not UTF-8".into());
    };
    match PoolConfig::from_toml(text, Path::new("/pools/pool.toml")) {
        Ok(c) => {
            for t in &c.tasks {
                let _ = t.task_name();
            }
            Ok(format!("ok {} tasks", c.tasks.len().min(3)))
        }
        Err(e) => Ok(format!("error: {e:#}")),
    }
}

const CSV_DICT: &[&[u8]] = &[
    b"path,label,group,split\n",
    b"\xEF\xBB\xBF",
    b",",
    b"\"",
    b"\"\"",
    b"\n",
    b"\r\n",
    b"..",
    b"../",
    b"/",
    b"./",
    b"train",
    b"test",
    b"C:\\",
    b"\\\\?\\",
];

const TOML_DICT: &[&[u8]] = &[
    b"[[task]]\n",
    b"[train]\n",
    b"path = ",
    b"name = ",
    b"weight = ",
    b"crop = ",
    b"split = { train = 0.8, val = 0.1, test = 0.1 }",
    b"seed = ",
    b"\"random-resized-crop\"",
    b"nan",
    b"inf",
    b"-0.0",
    b"1e400",
    b"18446744073709551615",
    b"\"..\"",
    b"\"\"",
    b"'''",
    b"\"\"\"",
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b"\n",
];

#[test]
fn fuzz_manifest_csv() {
    let target = Target {
        name: "manifest",
        dict: CSV_DICT,
        max_len: 16 << 10,
        alloc_limit: |_| usize::MAX,
        check: &manifest,
    };
    fuzz(&target, Vec::new()).assert_clean();
}

#[test]
fn fuzz_pool_toml() {
    let target = Target {
        name: "pool",
        dict: TOML_DICT,
        max_len: 16 << 10,
        alloc_limit: |_| usize::MAX,
        check: &pool,
    };
    fuzz(&target, Vec::new()).assert_clean();
}
