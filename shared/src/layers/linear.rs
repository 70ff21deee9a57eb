//! `nn.Linear` with torchvision's names and default initialisation.

use candle_core::{Module, Tensor, Var};

use crate::varstore::{Builder, Init};
use crate::Result;

/// A fully connected layer `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Var,
    bias: Var,
}

impl Linear {
    /// Register `weight` [out, in] and `bias` [out] with PyTorch's default initialisation
    /// (uniform on ±1/√in for both).
    pub fn new(b: &mut Builder<'_>, in_features: usize, out_features: usize) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        Ok(Self {
            weight: b.param("weight", &[out_features, in_features], Init::Uniform(bound))?,
            bias: b.param("bias", &[out_features], Init::Uniform(bound))?,
        })
    }

    /// Like [`Linear::new`] but with a zero bias (torchvision's DenseNet classifier).
    pub fn new_zero_bias(
        b: &mut Builder<'_>,
        in_features: usize,
        out_features: usize,
    ) -> Result<Self> {
        let bound = 1.0 / (in_features as f64).sqrt();
        Ok(Self {
            weight: b.param("weight", &[out_features, in_features], Init::Uniform(bound))?,
            bias: b.param("bias", &[out_features], Init::Const(0.0))?,
        })
    }

    /// The weight [out, in].
    pub fn weight(&self) -> &Var {
        &self.weight
    }

    /// The bias [out].
    pub fn bias(&self) -> &Var {
        &self.bias
    }

    /// Number of outputs.
    pub fn out_features(&self) -> usize {
        self.bias.dims()[0]
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        xs.matmul(&self.weight.as_tensor().t()?)?
            .broadcast_add(self.bias.as_tensor())
    }
}
