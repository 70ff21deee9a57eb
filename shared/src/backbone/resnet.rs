//! torchvision's ResNet (v1.5: the stride sits on the 3×3 convolution of a bottleneck).

use candle_core::{Module, ModuleT, Tensor};

use super::topology::{resnet_blocks, ConvShape, ResBlock, STEM_CONV, STEM_POOL};
use crate::layers::{max_pool2d, BatchNorm2d, Conv2d, ConvInit};
use crate::varstore::Builder;
use crate::Result;

#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
}

impl ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        self.bn.forward_t(&self.conv.forward(xs)?, train)
    }

    /// `relu(bn(conv(xs)) [+ residual])`, fused in training on the CPU.
    fn forward_relu_t(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        self.bn
            .forward_relu_t(&self.conv.forward(xs)?, residual, train)
    }
}

/// A residual block, basic or bottleneck.
#[derive(Debug, Clone)]
struct Block {
    /// conv1/bn1, conv2/bn2 (and conv3/bn3 for bottlenecks).
    layers: Vec<ConvBn>,
    /// `downsample.0` (1×1 conv) and `downsample.1` (BN) when the shape changes.
    downsample: Option<ConvBn>,
}

impl ConvBn {
    /// Register `conv` under `conv_name` and its BatchNorm under `bn_name`.
    fn new(b: &mut Builder<'_>, conv_name: &str, bn_name: &str, c: ConvShape) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::new(
                &mut b.pp(conv_name),
                c.in_ch,
                c.out_ch,
                c.kernel,
                c.stride,
                c.padding,
                ConvInit::FanOut,
            )?,
            bn: BatchNorm2d::new(&mut b.pp(bn_name), c.out_ch)?,
        })
    }
}

impl Block {
    fn new(b: &mut Builder<'_>, block: &ResBlock) -> Result<Self> {
        let layers = block
            .convs
            .iter()
            .enumerate()
            .map(|(i, &c)| ConvBn::new(b, &format!("conv{}", i + 1), &format!("bn{}", i + 1), c))
            .collect::<Result<Vec<_>>>()?;
        let downsample = block
            .downsample
            .map(|c| ConvBn::new(&mut b.pp("downsample"), "0", "1", c))
            .transpose()?;
        Ok(Self { layers, downsample })
    }

    fn forward_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let identity = match &self.downsample {
            Some(d) => d.forward_t(xs, train)?,
            None => xs.clone(),
        };
        let (last, inner) = self
            .layers
            .split_last()
            .ok_or_else(|| candle_core::Error::Msg("residual block without layers".into()))?;
        let mut h = xs.clone();
        for layer in inner {
            h = layer.forward_relu_t(&h, None, train)?;
        }
        last.forward_relu_t(&h, Some(&identity), train)
    }
}

/// ResNet trunk: stem, four stages (`layer1`…`layer4`).
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: ConvBn,
    stages: Vec<Vec<Block>>,
}

impl ResNet {
    /// Register a ResNet with `counts` blocks per stage under `b` (names `conv1`, `bn1`,
    /// `layerN.M.*`), bottlenecks or basic blocks.
    pub fn new(b: &mut Builder<'_>, counts: [usize; 4], bottleneck: bool) -> Result<Self> {
        let stem = ConvBn::new(b, "conv1", "bn1", STEM_CONV)?;
        let stages = resnet_blocks(counts, bottleneck)
            .iter()
            .map(|stage| {
                stage
                    .iter()
                    .map(|block| Block::new(&mut b.pp(block.prefix()), block))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { stem, stages })
    }

    /// The stage-4 feature map.
    pub fn feature_map_t(&self, xs: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let mut h = self.stem.forward_relu_t(xs, None, train)?;
        h = max_pool2d(&h, STEM_POOL)?;
        for stage in &self.stages {
            for block in stage {
                h = block.forward_t(&h, train)?;
            }
        }
        Ok(h)
    }
}
