//! Trainable layers with torchvision's parameter names and PyTorch's semantics.

mod batchnorm;
mod batchnorm_op;
mod batchnorm_sync;
pub mod channel_affine;
mod concat;
pub mod conv;
mod dtype;
mod fill;
mod linear;
pub mod pool;
mod reduce;

use candle_core::{CpuStorage, Layout, WithDType};

/// The `T` elements of a CPU storage under a contiguous `layout` (the CustomOps' inputs);
/// `what` names the operand in the error for a strided one.
pub(crate) fn contiguous_slice<'a, T: WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what} must be contiguous")))?;
    Ok(&s.as_slice::<T>()?[start..end])
}

pub use batchnorm::{collect_input_moments, BatchNorm2d, InputMoments, BN_EPS};
pub use batchnorm_sync::{with_synced_batch_norm, BatchStatsSync};
pub use concat::concat_channels;
pub use conv::{Conv2d, ConvInit};
pub use linear::Linear;
pub use pool::{avg_pool2x2, global_avg_pool, max_pool2d, MaxPool2d};

use std::sync::atomic::{AtomicBool, Ordering};

static GENERIC_OPS: AtomicBool = AtomicBool::new(false);

/// Run the device-independent compositions (what CUDA and other devices run: candle's
/// convolution and its autograd, the unfused BatchNorm, the composed max-pool) on the CPU
/// too, instead of the fused CPU kernels. For tests that check those paths against the
/// fixtures on machines without a GPU; process-wide.
pub fn force_generic_ops(on: bool) {
    GENERIC_OPS.store(on, Ordering::SeqCst);
}

/// Whether the fused CPU kernels serve this tensor.
pub(crate) fn use_fused_cpu(t: &candle_core::Tensor) -> bool {
    t.device().is_cpu() && !GENERIC_OPS.load(Ordering::SeqCst)
}
