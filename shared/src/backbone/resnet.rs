//! torchvision's ResNet (v1.5: the stride sits on the 3×3 convolution of a bottleneck).

use candle_core::{Module, ModuleT, Tensor};

use crate::layers::{max_pool2d, BatchNorm2d, Conv2d, ConvInit, MaxPool2d};
use crate::varstore::Builder;
use crate::Result;

/// The stem's pooling: `MaxPool2d(3, stride=2, padding=1)`.
pub const STEM_POOL: MaxPool2d = MaxPool2d {
    kernel: 3,
    stride: 2,
    padding: 1,
};

/// Block type and number of blocks in each of the four stages.
#[derive(Debug, Clone, Copy)]
pub enum Depth {
    /// Two 3×3 convolutions per block (ResNet-18/34).
    Basic([usize; 4]),
    /// 1×1 → 3×3 → 1×1 with expansion 4 (ResNet-50/101).
    Bottleneck([usize; 4]),
}

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

impl Block {
    fn new(
        b: &mut Builder<'_>,
        in_ch: usize,
        planes: usize,
        stride: usize,
        bottleneck: bool,
    ) -> Result<Self> {
        // (in, out, kernel, stride, padding) for each conv, in torchvision's order.
        let shapes: Vec<(usize, usize, usize, usize, usize)> = if bottleneck {
            vec![
                (in_ch, planes, 1, 1, 0),
                (planes, planes, 3, stride, 1),
                (planes, planes * 4, 1, 1, 0),
            ]
        } else {
            vec![(in_ch, planes, 3, stride, 1), (planes, planes, 3, 1, 1)]
        };
        let out_ch = shapes.last().map(|s| s.1).unwrap_or(planes);
        let mut layers = Vec::with_capacity(shapes.len());
        for (i, (ci, co, k, s, p)) in shapes.into_iter().enumerate() {
            let conv = Conv2d::new(
                &mut b.pp(format!("conv{}", i + 1)),
                ci,
                co,
                k,
                s,
                p,
                ConvInit::FanOut,
            )?;
            let bn = BatchNorm2d::new(&mut b.pp(format!("bn{}", i + 1)), co)?;
            layers.push(ConvBn { conv, bn });
        }
        let downsample = if stride != 1 || in_ch != out_ch {
            let mut d = b.pp("downsample");
            let conv = Conv2d::new(
                &mut d.pp("0"),
                in_ch,
                out_ch,
                1,
                stride,
                0,
                ConvInit::FanOut,
            )?;
            let bn = BatchNorm2d::new(&mut d.pp("1"), out_ch)?;
            Some(ConvBn { conv, bn })
        } else {
            None
        };
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
    /// Register a ResNet of the given depth under `b` (names `conv1`, `bn1`, `layerN.M.*`).
    pub fn new(b: &mut Builder<'_>, depth: Depth) -> Result<Self> {
        let (counts, bottleneck) = match depth {
            Depth::Basic(c) => (c, false),
            Depth::Bottleneck(c) => (c, true),
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let stem = ConvBn {
            conv: Conv2d::new(&mut b.pp("conv1"), 3, 64, 7, 2, 3, ConvInit::FanOut)?,
            bn: BatchNorm2d::new(&mut b.pp("bn1"), 64)?,
        };
        let mut in_ch = 64;
        let mut stages = Vec::with_capacity(4);
        for (s, &count) in counts.iter().enumerate() {
            let planes = 64 << s;
            let mut stage_b = b.pp(format!("layer{}", s + 1));
            let mut blocks = Vec::with_capacity(count);
            for i in 0..count {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                blocks.push(Block::new(
                    &mut stage_b.pp(i.to_string()),
                    in_ch,
                    planes,
                    stride,
                    bottleneck,
                )?);
                in_ch = planes * expansion;
            }
            stages.push(blocks);
        }
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
