//! Helpers shared by the CLI integration tests: run the `mtpath` binary, check it succeeded,
//! and a few real tiles from ../shared/data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use mtpath_shared::testdata::data_dir;

/// Run the `mtpath` binary built for these tests.
pub fn mtpath(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mtpath"))
        .args(args)
        .output()
        .expect("run mtpath")
}

/// A path as `&str` for an argument list.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Fail with the command's status and both outputs unless it succeeded.
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Three real tiles of different formats: TIFF, PNG and JPEG.
pub fn tiles() -> Vec<PathBuf> {
    [
        "nct-crc-samples/images/adi/ADI-AAQEFMRI.tif",
        "idc-breast/images/idc/10253_idx5_x801_y301_class1.png",
        "lymphoma/images/cll/cll_0.jpg",
    ]
    .iter()
    .map(|p| data_dir().join(p))
    .collect()
}
