//! Parity with PyTorch/torchvision: the fixtures in `../shared/fixtures` (see its README) hold
//! features, logits, train-mode gradients and BatchNorm statistics computed in float64 from the
//! same weights. Our float32 maths must land within the tolerances.

#[path = "parity_common.rs"]
mod parity_common;

use candle_core::DType;
use parity_common::{eval_parity, folded_single_sample_parity, train_parity};

#[test]
fn resnet18_eval_matches_torchvision() {
    eval_parity("resnet18");
}

#[test]
fn resnet18_folded_single_samples_match_torchvision() {
    folded_single_sample_parity("resnet18");
}

#[test]
fn resnet18_train_step_matches_torchvision_f64() {
    train_parity("resnet18", DType::F64, 1e-3);
}

#[test]
fn resnet18_train_step_float32_stays_close() {
    train_parity("resnet18", DType::F32, 1e-2);
}

#[test]
fn resnet50_eval_matches_torchvision() {
    eval_parity("resnet50");
}

#[test]
fn resnet50_folded_single_samples_match_torchvision() {
    folded_single_sample_parity("resnet50");
}

#[test]
fn resnet50_train_step_matches_torchvision_f64() {
    train_parity("resnet50", DType::F64, 1e-3);
}

#[test]
fn resnet50_train_step_float32_stays_close() {
    train_parity("resnet50", DType::F32, 1e-2);
}

#[test]
fn densenet121_eval_matches_torchvision() {
    eval_parity("densenet121");
}

#[test]
fn densenet121_folded_single_samples_match_torchvision() {
    folded_single_sample_parity("densenet121");
}

#[test]
fn densenet121_train_step_matches_torchvision_f64() {
    train_parity("densenet121", DType::F64, 1e-3);
}

#[test]
fn densenet121_train_step_float32_stays_close() {
    train_parity("densenet121", DType::F32, 1e-2);
}
