//! torchvision's DenseNet-BC (growth 32, bottleneck width 4×growth, compression 0.5).

use candle_core::{Module, Tensor};

use crate::backbone::resnet::STEM_POOL;

use crate::layers::{avg_pool2x2, concat_channels, max_pool2d, BatchNorm2d, Conv2d, ConvInit};
use crate::varstore::Builder;
use crate::Result;

const GROWTH: usize = 32;
const BN_SIZE: usize = 4;
const INIT_FEATURES: usize = 64;

/// `_DenseLayer`: norm1 → relu → conv1 (1×1) → norm2 → relu → conv2 (3×3).
#[derive(Debug, Clone)]
struct DenseLayer {
    norm1: BatchNorm2d,
    conv1: Conv2d,
    norm2: BatchNorm2d,
    conv2: Conv2d,
}

impl DenseLayer {
    fn new(b: &mut Builder<'_>, in_ch: usize) -> Result<Self> {
        let mid = BN_SIZE * GROWTH;
        Ok(Self {
            norm1: BatchNorm2d::new(&mut b.pp("norm1"), in_ch)?,
            conv1: Conv2d::new(&mut b.pp("conv1"), in_ch, mid, 1, 1, 0, ConvInit::FanIn)?,
            norm2: BatchNorm2d::new(&mut b.pp("norm2"), mid)?,
            conv2: Conv2d::new(&mut b.pp("conv2"), mid, GROWTH, 3, 1, 1, ConvInit::FanIn)?,
        })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self.norm1.forward_relu_t(xs, None, train)?;
        let h = self.conv1.forward(&h)?;
        let h = self.norm2.forward_relu_t(&h, None, train)?;
        self.conv2.forward(&h)
    }
}

/// `_Transition`: norm → relu → 1×1 conv (halves channels) → 2×2 average pool.
#[derive(Debug, Clone)]
struct Transition {
    norm: BatchNorm2d,
    conv: Conv2d,
}

/// DenseNet trunk under `features.*`.
#[derive(Debug, Clone)]
pub struct DenseNet {
    conv0: Conv2d,
    norm0: BatchNorm2d,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: BatchNorm2d,
}

impl DenseNet {
    /// Register a DenseNet with the given number of layers per dense block.
    pub fn new(b: &mut Builder<'_>, block_config: [usize; 4]) -> Result<Self> {
        let mut f = b.pp("features");
        let conv0 = Conv2d::new(
            &mut f.pp("conv0"),
            3,
            INIT_FEATURES,
            7,
            2,
            3,
            ConvInit::FanIn,
        )?;
        let norm0 = BatchNorm2d::new(&mut f.pp("norm0"), INIT_FEATURES)?;
        let mut ch = INIT_FEATURES;
        let mut blocks = Vec::with_capacity(4);
        let mut transitions = Vec::with_capacity(3);
        for (i, &n_layers) in block_config.iter().enumerate() {
            let mut bb = f.pp(format!("denseblock{}", i + 1));
            let mut layers = Vec::with_capacity(n_layers);
            for l in 0..n_layers {
                layers.push(DenseLayer::new(
                    &mut bb.pp(format!("denselayer{}", l + 1)),
                    ch + l * GROWTH,
                )?);
            }
            ch += n_layers * GROWTH;
            blocks.push(layers);
            if i + 1 < block_config.len() {
                let mut tb = f.pp(format!("transition{}", i + 1));
                transitions.push(Transition {
                    norm: BatchNorm2d::new(&mut tb.pp("norm"), ch)?,
                    conv: Conv2d::new(&mut tb.pp("conv"), ch, ch / 2, 1, 1, 0, ConvInit::FanIn)?,
                });
                ch /= 2;
            }
        }
        let norm5 = BatchNorm2d::new(&mut f.pp("norm5"), ch)?;
        Ok(Self {
            conv0,
            norm0,
            blocks,
            transitions,
            norm5,
        })
    }

    /// The final feature map after `norm5` and the ReLU torchvision applies in `forward`.
    pub fn feature_map_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let h = self
            .norm0
            .forward_relu_t(&self.conv0.forward(xs)?, None, train)?;
        let mut h = max_pool2d(&h, STEM_POOL)?;
        for (i, block) in self.blocks.iter().enumerate() {
            // Each layer's input is the previous input plus that layer's new channels
            // (torchvision's `cat` of all earlier features, grown one piece at a time).
            for layer in block {
                let new = layer.forward_t(&h, train)?;
                h = concat_channels(&h, &new)?;
            }
            if let Some(t) = self.transitions.get(i) {
                let x = t.norm.forward_relu_t(&h, None, train)?;
                h = avg_pool2x2(&t.conv.forward(&x)?)?;
            }
        }
        self.norm5.forward_relu_t(&h, None, train)
    }
}
