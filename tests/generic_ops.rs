//! The device-independent op compositions — what CUDA runs: candle's convolution and its
//! autograd, the unfused BatchNorm, the composed max-pool — checked against the torchvision
//! fixtures on the CPU (`force_generic_ops`), so a GPU build's maths is known right before it
//! meets a GPU. Its own test binary: the switch is process-wide.

#[path = "parity_common.rs"]
mod parity_common;

use candle_core::DType;
use mtpath_shared::layers::force_generic_ops;
use parity_common::{eval_parity, train_parity};

#[test]
fn resnet18_generic_ops_match_torchvision() {
    force_generic_ops(true);
    eval_parity("resnet18");
    train_parity("resnet18", DType::F64, 1e-3);
    train_parity("resnet18", DType::F32, 1e-2);
}
