//! CNN trunks with torchvision's exact state-dict names.

mod densenet;
mod resnet;
pub mod topology;

use std::fmt;
use std::str::FromStr;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use densenet::DenseNet;
pub use resnet::ResNet;

use crate::varstore::Builder;
use crate::{Error, Result};

/// A supported architecture, named as in `torchvision.models`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// ResNet-18 (basic blocks 2-2-2-2).
    ResNet18,
    /// ResNet-34 (basic blocks 3-4-6-3).
    ResNet34,
    /// ResNet-50 (bottlenecks 3-4-6-3).
    ResNet50,
    /// ResNet-101 (bottlenecks 3-4-23-3).
    ResNet101,
    /// DenseNet-121 (growth 32, blocks 6-12-24-16).
    DenseNet121,
    /// DenseNet-169 (growth 32, blocks 6-12-32-32).
    DenseNet169,
}

impl Arch {
    /// Every supported architecture.
    pub const ALL: [Arch; 6] = [
        Arch::ResNet18,
        Arch::ResNet34,
        Arch::ResNet50,
        Arch::ResNet101,
        Arch::DenseNet121,
        Arch::DenseNet169,
    ];

    /// torchvision's name, e.g. `resnet50`.
    pub fn name(self) -> &'static str {
        match self {
            Arch::ResNet18 => "resnet18",
            Arch::ResNet34 => "resnet34",
            Arch::ResNet50 => "resnet50",
            Arch::ResNet101 => "resnet101",
            Arch::DenseNet121 => "densenet121",
            Arch::DenseNet169 => "densenet169",
        }
    }

    /// Length of the feature vector (the classifier's input).
    pub fn feature_dim(self) -> usize {
        match self {
            Arch::ResNet18 | Arch::ResNet34 => 512,
            Arch::ResNet50 | Arch::ResNet101 => 2048,
            Arch::DenseNet121 => 1024,
            Arch::DenseNet169 => 1664,
        }
    }

    /// The state-dict prefix of torchvision's classifier: `fc` or `classifier`.
    pub fn classifier_name(self) -> &'static str {
        match self {
            Arch::DenseNet121 | Arch::DenseNet169 => "classifier",
            _ => "fc",
        }
    }

    /// Guess the architecture from state-dict names (torchvision naming), e.g. to load a file
    /// without metadata or to explain a mismatch.
    pub fn infer_from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Arch> {
        let mut resnet_blocks = [0usize; 4];
        let mut bottleneck = false;
        let mut dense_layers = [0usize; 4];
        for key in keys {
            let key = key.strip_prefix("module.").unwrap_or(key);
            let parts: Vec<&str> = key.split('.').collect();
            if let (Some(layer), Some(idx)) = (parts.first(), parts.get(1)) {
                if let (Some(l), Ok(i)) = (layer.strip_prefix("layer"), idx.parse::<usize>()) {
                    if let Ok(l) = l.parse::<usize>() {
                        if (1..=4).contains(&l) {
                            resnet_blocks[l - 1] = resnet_blocks[l - 1].max(i + 1);
                        }
                    }
                    if parts.get(2) == Some(&"conv3") {
                        bottleneck = true;
                    }
                }
            }
            if parts.first() == Some(&"features") {
                if let (Some(b), Some(l)) = (parts.get(1), parts.get(2)) {
                    if let (Some(b), Some(l)) =
                        (b.strip_prefix("denseblock"), l.strip_prefix("denselayer"))
                    {
                        if let (Ok(b), Ok(l)) = (b.parse::<usize>(), l.parse::<usize>()) {
                            if (1..=4).contains(&b) {
                                dense_layers[b - 1] = dense_layers[b - 1].max(l);
                            }
                        }
                    }
                }
            }
        }
        topology::Family::ResNet {
            counts: resnet_blocks,
            bottleneck,
        }
        .arch()
        .or(topology::Family::DenseNet {
            layers: dense_layers,
        }
        .arch())
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Arch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.trim().to_ascii_lowercase().replace(['-', '_'], "");
        Arch::ALL
            .into_iter()
            .find(|a| a.name() == wanted)
            .ok_or_else(|| {
                let names: Vec<_> = Arch::ALL.iter().map(|a| a.name()).collect();
                Error::invalid(format!(
                    "unknown architecture `{s}`; choose one of: {}",
                    names.join(", ")
                ))
            })
    }
}

/// A trunk: everything up to and including the global average pool.
#[derive(Debug, Clone)]
pub enum Backbone {
    /// A residual network.
    ResNet(ResNet),
    /// A densely connected network.
    DenseNet(DenseNet),
}

impl Backbone {
    /// Register the trunk's tensors under `b` with torchvision's names and initialisation.
    pub fn new(arch: Arch, b: &mut Builder<'_>) -> Result<Self> {
        Ok(match topology::Family::of(arch) {
            topology::Family::ResNet { counts, bottleneck } => {
                Backbone::ResNet(ResNet::new(b, counts, bottleneck)?)
            }
            topology::Family::DenseNet { layers } => Backbone::DenseNet(DenseNet::new(b, layers)?),
        })
    }

    /// The last feature map [N, C, h, w] (DenseNet: after the final ReLU).
    pub fn feature_map_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        match self {
            Backbone::ResNet(m) => m.feature_map_t(xs, train),
            Backbone::DenseNet(m) => m.feature_map_t(xs, train),
        }
    }

    /// Global-average-pooled features [N, F] of an NCHW batch.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        crate::layers::global_avg_pool(&self.feature_map_t(xs, train)?)
    }
}
