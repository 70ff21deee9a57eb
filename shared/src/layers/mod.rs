//! Trainable layers with torchvision's parameter names and PyTorch's semantics.

mod batchnorm;
mod batchnorm_op;
mod conv;
pub mod conv_op;
mod linear;
pub mod pool;

pub use batchnorm::BatchNorm2d;
pub use conv::{Conv2d, ConvInit};
pub use linear::Linear;
pub use pool::{avg_pool2x2, global_avg_pool, max_pool2d, MaxPool2d};
