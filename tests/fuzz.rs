//! Fuzz tests of the parsers that read user bytes (JPEG / PNG / TIFF decoding, safetensors and
//! `.pth` weights, features files, probe JSON), with the in-repo mutation fuzzer
//! (`mtpath_shared::fuzzing`): each target replays `fuzz/regressions/<target>/` and
//! `fuzz/corpus/<target>/`, then mutates for `MTPATH_FUZZ_SECS` seconds (default 4). No input
//! may panic, hang or allocate beyond the target's limit; our JPEG decoder must agree with the
//! `image` crate's wherever both decode. Failing inputs are saved under
//! `target/fuzz-findings/<target>/` (the failure message prints their paths).

use mtpath_shared::fuzzing::{fuzz, targets, Target, TrackingAlloc};

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc;

fn run(target: &Target) {
    fuzz(target, Vec::new()).assert_clean();
}

#[test]
fn fuzz_jpeg_decoder_against_image_crate() {
    run(&targets::JPEG);
}

#[test]
fn fuzz_image_decoding() {
    run(&targets::IMAGE);
}

#[test]
fn fuzz_safetensors_weights() {
    run(&targets::SAFETENSORS);
}

#[test]
fn fuzz_pth_weights() {
    run(&targets::PTH);
}

#[test]
fn fuzz_features_file() {
    run(&targets::FEATURES);
}

#[test]
fn fuzz_probe_json() {
    run(&targets::PROBE);
}
