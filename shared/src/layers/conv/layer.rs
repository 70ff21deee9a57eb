//! 2-D convolution without bias (every convolution in ResNet and DenseNet).

use candle_core::{Module, Tensor, Var};

use crate::varstore::{Builder, Init};
use crate::Result;

/// How the weights of a new convolution are drawn (both are Kaiming normal for ReLU).
#[derive(Debug, Clone, Copy)]
pub enum ConvInit {
    /// `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, torchvision's ResNet.
    FanOut,
    /// `kaiming_normal_()` (fan-in), torchvision's DenseNet.
    FanIn,
}

/// A bias-free `nn.Conv2d` with square kernel, stride and padding.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Var,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    /// Register `weight` [out, in, k, k] under the builder's prefix.
    pub fn new(
        b: &mut Builder<'_>,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        init: ConvInit,
    ) -> Result<Self> {
        let fan = match init {
            ConvInit::FanOut => out_channels * kernel * kernel,
            ConvInit::FanIn => in_channels * kernel * kernel,
        };
        let std = (2.0 / fan as f64).sqrt();
        let weight = b.param(
            "weight",
            &[out_channels, in_channels, kernel, kernel],
            Init::Normal(std),
        )?;
        Ok(Self {
            weight,
            stride,
            padding,
        })
    }

    /// The kernel [out, in, k, k].
    pub fn weight(&self) -> &Tensor {
        self.weight.as_tensor()
    }

    /// Stride (same in both directions).
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Zero padding (same on all sides).
    pub fn padding(&self) -> usize {
        self.padding
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        super::conv2d(
            xs,
            self.weight.as_tensor(),
            super::ConvGeom {
                stride: self.stride,
                padding: self.padding,
            },
        )
    }
}
