//! torchvision's DenseNet-BC (growth 32, bottleneck width 4×growth, compression 0.5).

use candle_core::{Module, Tensor};

use super::topology::{densenet_stages, BN_SIZE, GROWTH, STEM_CONV, STEM_POOL};
use crate::layers::{avg_pool2x2, concat_channels, max_pool2d, BatchNorm2d, Conv2d, ConvInit};
use crate::varstore::Builder;
use crate::Result;

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
    /// Register a DenseNet-BC with `layers` dense layers per block.
    pub fn new(b: &mut Builder<'_>, layers: [usize; 4]) -> Result<Self> {
        let mut f = b.pp("features");
        let c = STEM_CONV;
        let conv0 = Conv2d::new(
            &mut f.pp("conv0"),
            c.in_ch,
            c.out_ch,
            c.kernel,
            c.stride,
            c.padding,
            ConvInit::FanIn,
        )?;
        let norm0 = BatchNorm2d::new(&mut f.pp("norm0"), c.out_ch)?;
        let (stages, out_ch) = densenet_stages(layers);
        let mut blocks = Vec::with_capacity(stages.len());
        let mut transitions = Vec::with_capacity(stages.len() - 1);
        for (i, stage) in stages.iter().enumerate() {
            let mut bb = f.pp(format!("denseblock{}", i + 1));
            let layers = stage
                .layer_inputs
                .iter()
                .enumerate()
                .map(|(l, &in_ch)| {
                    DenseLayer::new(&mut bb.pp(format!("denselayer{}", l + 1)), in_ch)
                })
                .collect::<Result<Vec<_>>>()?;
            blocks.push(layers);
            if let Some(ch) = stage.transition {
                let mut tb = f.pp(format!("transition{}", i + 1));
                transitions.push(Transition {
                    norm: BatchNorm2d::new(&mut tb.pp("norm"), ch)?,
                    conv: Conv2d::new(&mut tb.pp("conv"), ch, ch / 2, 1, 1, 0, ConvInit::FanIn)?,
                });
            }
        }
        let norm5 = BatchNorm2d::new(&mut f.pp("norm5"), out_ch)?;
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
