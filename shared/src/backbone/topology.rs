//! The block topology of each family, written once: the training trunks
//! ([`super::ResNet`], [`super::DenseNet`]) and the folded inference trunk
//! ([`crate::inference::FoldedNet`]) both build their layers from these tables, so the two
//! cannot disagree on a channel count, a stride or a tensor name.

use super::Arch;
use crate::layers::MaxPool2d;

/// The stem's `MaxPool2d(3, stride=2, padding=1)` (ResNet and DenseNet alike).
pub const STEM_POOL: MaxPool2d = MaxPool2d {
    kernel: 3,
    stride: 2,
    padding: 1,
};

/// Channels out of the stem (ResNet's `conv1`, DenseNet's `features.conv0`).
pub const STEM_CHANNELS: usize = 64;

/// The stem convolution: 3 → 64, 7×7, stride 2, padding 3.
pub const STEM_CONV: ConvShape = ConvShape {
    in_ch: 3,
    out_ch: STEM_CHANNELS,
    kernel: 7,
    stride: 2,
    padding: 3,
};

/// DenseNet-BC's growth rate.
pub const GROWTH: usize = 32;

/// Width of a dense layer's 1×1 bottleneck: `BN_SIZE × GROWTH`.
pub const BN_SIZE: usize = 4;

/// One square convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub in_ch: usize,
    /// Output channels.
    pub out_ch: usize,
    /// Kernel side.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
}

/// Which family an architecture belongs to, with its depth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Four stages of residual blocks (`counts` per stage); bottlenecks (1×1 → 3×3 → 1×1,
    /// expansion 4) or basic blocks (two 3×3).
    ResNet {
        /// Blocks per stage.
        counts: [usize; 4],
        /// Bottleneck blocks (ResNet-50/101) rather than basic ones (ResNet-18/34).
        bottleneck: bool,
    },
    /// Four dense blocks (`layers` per block) with transitions between them.
    DenseNet {
        /// Dense layers per block.
        layers: [usize; 4],
    },
}

impl Family {
    /// The family and depth of `arch`.
    pub fn of(arch: Arch) -> Self {
        match arch {
            Arch::ResNet18 => Family::ResNet {
                counts: [2, 2, 2, 2],
                bottleneck: false,
            },
            Arch::ResNet34 => Family::ResNet {
                counts: [3, 4, 6, 3],
                bottleneck: false,
            },
            Arch::ResNet50 => Family::ResNet {
                counts: [3, 4, 6, 3],
                bottleneck: true,
            },
            Arch::ResNet101 => Family::ResNet {
                counts: [3, 4, 23, 3],
                bottleneck: true,
            },
            Arch::DenseNet121 => Family::DenseNet {
                layers: [6, 12, 24, 16],
            },
            Arch::DenseNet169 => Family::DenseNet {
                layers: [6, 12, 32, 32],
            },
        }
    }

    /// The architecture with this family and depth, if it is one we support.
    pub fn arch(self) -> Option<Arch> {
        Arch::ALL.into_iter().find(|&a| Family::of(a) == self)
    }
}

/// One residual block: its stage-relative name and convolutions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResBlock {
    /// Stage index (0-based; the tensors live under `layer{stage + 1}`).
    pub stage: usize,
    /// Block index within the stage (`layer{stage + 1}.{index}`).
    pub index: usize,
    /// `conv1`, `conv2` (, `conv3`), in torchvision's order; each is followed by `bnK`.
    pub convs: Vec<ConvShape>,
    /// `downsample.0` (followed by `downsample.1`) when the shape changes.
    pub downsample: Option<ConvShape>,
}

impl ResBlock {
    /// `layer{stage + 1}.{index}`: the block's prefix in a state dict.
    pub fn prefix(&self) -> String {
        format!("layer{}.{}", self.stage + 1, self.index)
    }
}

/// Every residual block of a ResNet, stage by stage (torchvision v1.5: the stride sits on the
/// 3×3 convolution of a bottleneck).
pub fn resnet_blocks(counts: [usize; 4], bottleneck: bool) -> Vec<Vec<ResBlock>> {
    let expansion = if bottleneck { 4 } else { 1 };
    let mut in_ch = STEM_CHANNELS;
    let mut stages = Vec::with_capacity(counts.len());
    for (stage, &count) in counts.iter().enumerate() {
        let planes = STEM_CHANNELS << stage;
        let out_ch = planes * expansion;
        let mut blocks = Vec::with_capacity(count);
        for index in 0..count {
            let stride = if stage > 0 && index == 0 { 2 } else { 1 };
            let conv = |in_ch, out_ch, kernel, stride, padding| ConvShape {
                in_ch,
                out_ch,
                kernel,
                stride,
                padding,
            };
            let convs = if bottleneck {
                vec![
                    conv(in_ch, planes, 1, 1, 0),
                    conv(planes, planes, 3, stride, 1),
                    conv(planes, out_ch, 1, 1, 0),
                ]
            } else {
                vec![
                    conv(in_ch, planes, 3, stride, 1),
                    conv(planes, planes, 3, 1, 1),
                ]
            };
            let downsample =
                (stride != 1 || in_ch != out_ch).then(|| conv(in_ch, out_ch, 1, stride, 0));
            blocks.push(ResBlock {
                stage,
                index,
                convs,
                downsample,
            });
            in_ch = out_ch;
        }
        stages.push(blocks);
    }
    stages
}

/// One dense block of a DenseNet-BC and the transition after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DenseStage {
    /// Input channels of each dense layer (`denselayer{l + 1}`): the block's input plus
    /// `GROWTH` per earlier layer.
    pub layer_inputs: Vec<usize>,
    /// Channels into the transition that follows (it halves them); `None` after the last block.
    pub transition: Option<usize>,
}

/// The dense blocks of a DenseNet-BC, and the channel count into `features.norm5`.
pub fn densenet_stages(layers: [usize; 4]) -> (Vec<DenseStage>, usize) {
    let mut ch = STEM_CHANNELS;
    let mut stages = Vec::with_capacity(layers.len());
    for (b, &n) in layers.iter().enumerate() {
        let layer_inputs = (0..n).map(|l| ch + l * GROWTH).collect();
        ch += n * GROWTH;
        let transition = (b + 1 < layers.len()).then_some(ch);
        if transition.is_some() {
            ch /= 2;
        }
        stages.push(DenseStage {
            layer_inputs,
            transition,
        });
    }
    (stages, ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_round_trip_and_end_at_the_feature_dim() {
        for arch in Arch::ALL {
            let family = Family::of(arch);
            assert_eq!(family.arch(), Some(arch));
            let out = match family {
                Family::ResNet { counts, bottleneck } => resnet_blocks(counts, bottleneck)
                    .last()
                    .and_then(|s| s.last())
                    .and_then(|b| b.convs.last())
                    .map(|c| c.out_ch),
                Family::DenseNet { layers } => Some(densenet_stages(layers).1),
            };
            assert_eq!(out, Some(arch.feature_dim()), "{arch}");
        }
    }

    #[test]
    fn resnet50_downsamples_where_torchvision_does() {
        let stages = resnet_blocks([3, 4, 6, 3], true);
        let with_downsample: Vec<String> = stages
            .iter()
            .flatten()
            .filter(|b| b.downsample.is_some())
            .map(ResBlock::prefix)
            .collect();
        assert_eq!(
            with_downsample,
            ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
        );
        assert_eq!(stages[1][0].convs[1].stride, 2);
        assert_eq!(stages[1][0].convs[0].stride, 1);
    }
}
