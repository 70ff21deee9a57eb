//! The inference-only trunk of an exported model: BatchNorm folded away.
//!
//! Every BatchNorm that directly follows a convolution becomes that convolution's bias (and a
//! per-output-channel factor on its kernel):
//!
//! ```text
//! s = γ / √(running_var + ε)      w' = w · s      b' = β − running_mean · s
//! ```
//!
//! That is every BatchNorm of a ResNet (`convK`+`bnK`, `downsample.0`+`downsample.1`, the stem
//! `conv1`+`bn1`), and in a DenseNet the stem (`conv0`+`norm0`) and each dense layer's
//! `conv1`+`norm2` (the 1×1 bottleneck is followed directly by `norm2`). DenseNet's other
//! BatchNorms (`norm1` of each dense layer, the transitions' `norm`, the final `norm5`) come
//! *before* a ReLU and act on inputs shared by several layers: no convolution can absorb them,
//! so they become a per-channel affine `y = x · scale + shift` (2 vectors instead of 4).
//!
//! Tensor names (torchvision's module paths, so a folded file reads like the state dict it
//! came from):
//!
//! | tensor | shape | meaning |
//! |---|---|---|
//! | `CONV.weight` | [out, in, k, k] | the kernel, BatchNorm scale folded in when `CONV.bias` exists |
//! | `CONV.bias` | [out] | the folded BatchNorm's shift (ResNet: every conv; DenseNet: `features.conv0`, `...denselayerL.conv1`) |
//! | `NORM.scale`, `NORM.shift` | [C] | DenseNet's unfoldable BatchNorms (`...denselayerL.norm1`, `...transitionT.norm`, `features.norm5`) |
//!
//! DenseNet's `...denselayerL.conv2` and `...transitionT.conv` keep their kernel alone.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::backbone::topology::{
    densenet_stages, resnet_blocks, ConvShape, Family, BN_SIZE, GROWTH, STEM_CONV, STEM_POOL,
};
use crate::layers::channel_affine::ChannelAffine;
use crate::layers::conv::{
    conv1x1_over_parts, conv2d_cached, conv2d_fused, ConvGeom, PackedKernel,
};
use crate::layers::{global_avg_pool, max_pool2d, BatchNorm2d};
use crate::varstore::VarStore;
use crate::weights::{normalize_name, TensorFile};
use crate::{Arch, Error, Network, Result};

/// Where the folded tensors come from: a trained state dict (fold as we go) or an exported
/// file (already folded).
trait Source {
    /// Kernel `[out, in, k, k]` of convolution `conv` and, when the BatchNorm `bn` follows it,
    /// the bias `[out]` it folds into.
    fn conv(&mut self, conv: &str, bn: Option<&str>, shape: [usize; 4]) -> Result<ConvParts>;
    /// `(scale, shift)` `[channels]` of the BatchNorm `bn`, kept as an affine.
    fn affine(&mut self, bn: &str, channels: usize) -> Result<(Tensor, Tensor)>;
}

type ConvParts = (Tensor, Option<Tensor>);

/// Tensors by normalised name, with the names asked for but absent.
struct Lookup<'a> {
    tensors: HashMap<String, &'a Tensor>,
    source: &'a str,
    arch: Arch,
    device: Device,
    missing: Vec<String>,
}

impl<'a> Lookup<'a> {
    fn new(file: &'a TensorFile, arch: Arch, device: &Device) -> Self {
        Self {
            tensors: file
                .tensors
                .iter()
                .map(|(n, t)| (normalize_name(n), t))
                .collect(),
            source: &file.source,
            arch,
            device: device.clone(),
            missing: Vec::new(),
        }
    }

    /// The f32 tensor `name` of shape `shape` on the target device; a missing one is recorded
    /// (and stood in for by zeros) so that the error can count them all.
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let Some(t) = self.tensors.get(name) else {
            self.missing.push(name.to_string());
            return Ok(Tensor::zeros(shape, DType::F32, &self.device)?);
        };
        if t.dims() != shape {
            return Err(Error::WeightsMismatch {
                path: self.source.to_string(),
                message: format!(
                    "tensor `{name}` has shape {:?} in the file but {shape:?} in {}",
                    t.dims(),
                    self.arch
                ),
            });
        }
        if !t.dtype().is_float() {
            return Err(Error::BadWeights {
                path: self.source.to_string(),
                message: format!("tensor `{name}` is {:?}, not floating point", t.dtype()),
            });
        }
        Ok(t.to_dtype(DType::F32)?.to_device(&self.device)?)
    }

    fn finish(&self, what: &str) -> Result<()> {
        match self.missing.first() {
            None => Ok(()),
            Some(first) => Err(Error::WeightsMismatch {
                path: self.source.to_string(),
                message: format!(
                    "{} {what} tensor(s) missing for {}, e.g. `{first}`: not {} weights?",
                    self.missing.len(),
                    self.arch,
                    self.arch
                ),
            }),
        }
    }
}

/// A trained state dict (torchvision names, BatchNorm with running statistics): folds.
struct Trained<'a>(Lookup<'a>);

impl Trained<'_> {
    /// Evaluation-mode `(scale, shift)` of BatchNorm `bn`, computed in f64 by
    /// [`BatchNorm2d::eval_scale_shift`] itself (so ε and the formula are the training
    /// network's).
    fn scale_shift(&mut self, bn: &str, channels: usize) -> Result<(Tensor, Tensor)> {
        let mut values = Vec::with_capacity(4);
        for part in ["weight", "bias", "running_mean", "running_var"] {
            values.push((part, self.0.get(&format!("{bn}.{part}"), &[channels])?));
        }
        let mut store = VarStore::with_dtype(&self.0.device, DType::F64, 0);
        let norm = BatchNorm2d::new(&mut store.root(), channels)?;
        for (part, value) in values {
            if let Some(entry) = store.get(part) {
                entry.var.set(&value.to_dtype(DType::F64)?)?;
            }
        }
        // Detached: computed from the store's variables, the results would otherwise carry
        // their autograd history into every forward pass (twice the time, ~8× the memory).
        let (scale, shift) = norm.eval_scale_shift()?;
        Ok((scale.detach(), shift.detach()))
    }
}

impl Source for Trained<'_> {
    fn conv(&mut self, conv: &str, bn: Option<&str>, shape: [usize; 4]) -> Result<ConvParts> {
        let weight = self.0.get(&format!("{conv}.weight"), &shape)?;
        let Some(bn) = bn else {
            return Ok((weight, None));
        };
        let (scale, shift) = self.scale_shift(bn, shape[0])?;
        let weight = weight
            .to_dtype(DType::F64)?
            .broadcast_mul(&scale.reshape((shape[0], 1, 1, 1))?)?
            .to_dtype(DType::F32)?;
        Ok((weight, Some(shift.to_dtype(DType::F32)?)))
    }

    fn affine(&mut self, bn: &str, channels: usize) -> Result<(Tensor, Tensor)> {
        let (scale, shift) = self.scale_shift(bn, channels)?;
        Ok((scale.to_dtype(DType::F32)?, shift.to_dtype(DType::F32)?))
    }
}

/// An exported file: the tensors are already folded.
struct Folded<'a>(Lookup<'a>);

impl Source for Folded<'_> {
    fn conv(&mut self, conv: &str, bn: Option<&str>, shape: [usize; 4]) -> Result<ConvParts> {
        let weight = self.0.get(&format!("{conv}.weight"), &shape)?;
        let bias = match bn {
            Some(_) => Some(self.0.get(&format!("{conv}.bias"), &[shape[0]])?),
            None => None,
        };
        Ok((weight, bias))
    }

    fn affine(&mut self, bn: &str, channels: usize) -> Result<(Tensor, Tensor)> {
        Ok((
            self.0.get(&format!("{bn}.scale"), &[channels])?,
            self.0.get(&format!("{bn}.shift"), &[channels])?,
        ))
    }
}

/// A convolution with an optional bias (the folded BatchNorm).
#[derive(Debug, Clone)]
struct Conv {
    name: String,
    weight: Tensor,
    /// `[1, out, 1, 1]`, ready to broadcast.
    bias: Option<Tensor>,
    /// The bias as a fused epilogue: without and with the ReLU that follows.
    epilogue: Option<[ChannelAffine; 2]>,
    geom: ConvGeom,
    /// The kernel as the direct kernels read it, packed on the first pass and kept.
    packed: PackedKernel,
}

impl Conv {
    fn load(src: &mut dyn Source, name: &str, bn: Option<&str>, c: ConvShape) -> Result<Self> {
        let (out_ch, stride, padding) = (c.out_ch, c.stride, c.padding);
        let (weight, bias) = src.conv(name, bn, [c.out_ch, c.in_ch, c.kernel, c.kernel])?;
        let epilogue = match &bias {
            Some(b) => {
                let shift = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let op = ChannelAffine::new(None, shift, false);
                Some([op.with_relu(false), op.with_relu(true)])
            }
            None => None,
        };
        Ok(Self {
            name: name.to_string(),
            weight: weight.contiguous()?,
            bias: bias.map(|b| b.reshape((1, out_ch, 1, 1))).transpose()?,
            epilogue,
            geom: ConvGeom { stride, padding },
            packed: PackedKernel::default(),
        })
    }

    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(xs, None, false)
    }

    /// `relu(self(relu(norm(cat(parts)))))`: DenseNet's `norm1 → ReLU → conv1 → (norm2 →
    /// ReLU)`, in one pass over the block's features where [`conv1x1_over_parts`] runs
    /// (DenseNet-121 at batch 1, two threads: with AVX-512F 10.4–10.8 → 9.0–9.1 ms for these
    /// layers on the 56×56 to 14×14 maps, with AVX2 18.8 → 17.8 ms on every map), else
    /// composed.
    fn forward_over_parts_relu(
        &self,
        norm: &Affine,
        parts: &[Tensor],
    ) -> candle_core::Result<Tensor> {
        let pointwise = self.geom
            == ConvGeom {
                stride: 1,
                padding: 0,
            };
        if let (Some([_, epilogue]), true) = (&self.epilogue, pointwise) {
            let norm = &norm.fused_relu;
            let fused = conv1x1_over_parts(parts, norm, &self.weight, &self.packed, epilogue)?;
            if let Some(y) = fused {
                return Ok(y);
            }
        }
        self.forward_with(&norm.forward_relu(parts, false)?, None, true)
    }

    /// `conv(xs) + bias (+ residual)`, then ReLU when `relu`: the epilogue fused into the
    /// convolution where there is a bias.
    fn forward_with(
        &self,
        xs: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> candle_core::Result<Tensor> {
        if let Some(ops) = &self.epilogue {
            let epilogue = &ops[usize::from(relu)];
            return conv2d_fused(
                xs,
                &self.weight,
                self.geom,
                &self.packed,
                epilogue,
                residual,
            );
        }
        let ys = conv2d_cached(xs, &self.weight, self.geom, &self.packed)?;
        let ys = match residual {
            Some(r) => (ys + r)?,
            None => ys,
        };
        if relu {
            ys.relu()
        } else {
            Ok(ys)
        }
    }

    fn tensors(&self, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        out.push((format!("{}.weight", self.name), self.weight.clone()));
        if let Some(b) = &self.bias {
            out.push((format!("{}.bias", self.name), b.flatten_all()?));
        }
        Ok(())
    }
}

/// An unfoldable BatchNorm as `y = x · scale + shift` per channel.
#[derive(Debug, Clone)]
struct Affine {
    name: String,
    /// `[1, C, 1, 1]`.
    scale: Tensor,
    /// `[1, C, 1, 1]`.
    shift: Tensor,
    /// `x · scale + shift → ReLU` fused (every use in DenseNet is followed by a ReLU).
    fused_relu: ChannelAffine,
}

impl Affine {
    fn load(src: &mut dyn Source, name: &str, channels: usize) -> Result<Self> {
        let (scale, shift) = src.affine(name, channels)?;
        let fused_relu = ChannelAffine::new(
            Some(scale.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            shift.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            true,
        );
        Ok(Self {
            name: name.to_string(),
            scale: scale.reshape((1, channels, 1, 1))?,
            shift: shift.reshape((1, channels, 1, 1))?,
            fused_relu,
        })
    }

    /// `relu(cat(parts) · scale + shift)`, 2×2-average-pooled when `pool2x2`
    /// ([`ChannelAffine::apply_parts`]: no concatenation is made).
    fn forward_relu(&self, parts: &[Tensor], pool2x2: bool) -> candle_core::Result<Tensor> {
        self.fused_relu.apply_parts(parts, pool2x2)
    }

    fn tensors(&self, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        out.push((format!("{}.scale", self.name), self.scale.flatten_all()?));
        out.push((format!("{}.shift", self.name), self.shift.flatten_all()?));
        Ok(())
    }
}

/// A residual block: convolutions with ReLUs between them, and the shortcut.
#[derive(Debug, Clone)]
struct Block {
    convs: Vec<Conv>,
    downsample: Option<Conv>,
}

#[derive(Debug, Clone)]
struct ResNetTrunk {
    stem: Conv,
    stages: Vec<Vec<Block>>,
}

impl ResNetTrunk {
    fn load(src: &mut dyn Source, counts: [usize; 4], bottleneck: bool) -> Result<Self> {
        let stem = Conv::load(src, "conv1", Some("bn1"), STEM_CONV)?;
        let mut stages = Vec::with_capacity(counts.len());
        for stage in resnet_blocks(counts, bottleneck) {
            let mut blocks = Vec::with_capacity(stage.len());
            for block in stage {
                let p = block.prefix();
                let convs = block
                    .convs
                    .iter()
                    .enumerate()
                    .map(|(j, &c)| {
                        let bn = format!("{p}.bn{}", j + 1);
                        Conv::load(src, &format!("{p}.conv{}", j + 1), Some(&bn), c)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let downsample = match block.downsample {
                    Some(c) => {
                        let bn = format!("{p}.downsample.1");
                        Some(Conv::load(src, &format!("{p}.downsample.0"), Some(&bn), c))
                    }
                    None => None,
                }
                .transpose()?;
                blocks.push(Block { convs, downsample });
            }
            stages.push(blocks);
        }
        Ok(Self { stem, stages })
    }

    fn feature_map(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = max_pool2d(&self.stem.forward_with(xs, None, true)?, STEM_POOL)?;
        for block in self.stages.iter().flatten() {
            let identity = match &block.downsample {
                Some(d) => d.forward(&h)?,
                None => h.clone(),
            };
            let mut y = h;
            let last = block.convs.len() - 1;
            for (i, conv) in block.convs.iter().enumerate() {
                y = if i == last {
                    conv.forward_with(&y, Some(&identity), true)?
                } else {
                    conv.forward_with(&y, None, true)?
                };
            }
            h = y;
        }
        Ok(h)
    }

    fn tensors(&self, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        self.stem.tensors(out)?;
        for block in self.stages.iter().flatten() {
            for c in &block.convs {
                c.tensors(out)?;
            }
            if let Some(d) = &block.downsample {
                d.tensors(out)?;
            }
        }
        Ok(())
    }
}

/// A dense layer: `norm1` (affine) → ReLU → `conv1` (with `norm2` folded) → ReLU → `conv2`.
#[derive(Debug, Clone)]
struct DenseLayer {
    norm1: Affine,
    conv1: Conv,
    conv2: Conv,
}

/// A transition: `norm` (affine) → ReLU → 1×1 `conv` → 2×2 average pool.
#[derive(Debug, Clone)]
struct Transition {
    norm: Affine,
    conv: Conv,
}

#[derive(Debug, Clone)]
struct DenseNetTrunk {
    conv0: Conv,
    blocks: Vec<Vec<DenseLayer>>,
    transitions: Vec<Transition>,
    norm5: Affine,
}

impl DenseNetTrunk {
    fn load(src: &mut dyn Source, layers: [usize; 4]) -> Result<Self> {
        let conv0 = Conv::load(src, "features.conv0", Some("features.norm0"), STEM_CONV)?;
        let mid = BN_SIZE * GROWTH;
        let conv = |in_ch, out_ch, kernel, padding| ConvShape {
            in_ch,
            out_ch,
            kernel,
            stride: 1,
            padding,
        };
        let (stages, out_ch) = densenet_stages(layers);
        let mut blocks = Vec::with_capacity(stages.len());
        let mut transitions = Vec::with_capacity(stages.len() - 1);
        for (b, stage) in stages.iter().enumerate() {
            let mut block = Vec::with_capacity(stage.layer_inputs.len());
            for (l, &in_ch) in stage.layer_inputs.iter().enumerate() {
                let p = format!("features.denseblock{}.denselayer{}", b + 1, l + 1);
                let norm2 = format!("{p}.norm2");
                block.push(DenseLayer {
                    norm1: Affine::load(src, &format!("{p}.norm1"), in_ch)?,
                    conv1: Conv::load(
                        src,
                        &format!("{p}.conv1"),
                        Some(&norm2),
                        conv(in_ch, mid, 1, 0),
                    )?,
                    conv2: Conv::load(src, &format!("{p}.conv2"), None, conv(mid, GROWTH, 3, 1))?,
                });
            }
            blocks.push(block);
            if let Some(ch) = stage.transition {
                let p = format!("features.transition{}", b + 1);
                transitions.push(Transition {
                    norm: Affine::load(src, &format!("{p}.norm"), ch)?,
                    conv: Conv::load(src, &format!("{p}.conv"), None, conv(ch, ch / 2, 1, 0))?,
                });
            }
        }
        let norm5 = Affine::load(src, "features.norm5", out_ch)?;
        Ok(Self {
            conv0,
            blocks,
            transitions,
            norm5,
        })
    }

    fn feature_map(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let h = max_pool2d(&self.conv0.forward_with(xs, None, true)?, STEM_POOL)?;
        // A block's input and its layers' outputs are kept apart (`features`); each
        // `norm → ReLU` reads them in place instead of a concatenation.
        let mut features = vec![h];
        for (i, block) in self.blocks.iter().enumerate() {
            for layer in block {
                let y = layer
                    .conv1
                    .forward_over_parts_relu(&layer.norm1, &features)?;
                features.push(layer.conv2.forward(&y)?);
            }
            if let Some(t) = self.transitions.get(i) {
                // torchvision's `conv → pool` as `pool → conv`: the pool commutes with the
                // 1×1 convolution (linear, no bias), which then has a quarter of the positions.
                let x = t.norm.forward_relu(&features, true)?;
                features = vec![t.conv.forward(&x)?];
            }
        }
        self.norm5.forward_relu(&features, false)
    }

    fn tensors(&self, out: &mut Vec<(String, Tensor)>) -> Result<()> {
        self.conv0.tensors(out)?;
        for (i, block) in self.blocks.iter().enumerate() {
            for layer in block {
                layer.norm1.tensors(out)?;
                layer.conv1.tensors(out)?;
                layer.conv2.tensors(out)?;
            }
            if let Some(t) = self.transitions.get(i) {
                t.norm.tensors(out)?;
                t.conv.tensors(out)?;
            }
        }
        self.norm5.tensors(out)
    }
}

#[derive(Debug, Clone)]
enum Trunk {
    ResNet(ResNetTrunk),
    DenseNet(DenseNetTrunk),
}

/// An inference-only trunk with BatchNorm folded away (see the module documentation for the
/// maths and the tensor names). Its features equal the training network's in evaluation mode
/// up to float rounding.
#[derive(Debug, Clone)]
pub struct FoldedNet {
    arch: Arch,
    trunk: Trunk,
    device: Device,
}

impl FoldedNet {
    /// Fold a trained state dict (torchvision names; mtpath checkpoints, `trunk.safetensors`,
    /// torchvision files) of `arch`. Classifier, heads and `num_batches_tracked` are ignored;
    /// a missing or misshapen trunk tensor is an error naming the file.
    pub fn fold(file: &TensorFile, arch: Arch, device: &Device) -> Result<Self> {
        let mut src = Trained(Lookup::new(file, arch, device));
        let trunk = Self::build(&mut src, arch)?;
        src.0.finish("trunk")?;
        Ok(Self {
            arch,
            trunk,
            device: device.clone(),
        })
    }

    /// Fold a network held in memory (its trunk; classifier and heads are ignored).
    pub fn from_network(net: &Network) -> Result<Self> {
        let file = TensorFile {
            tensors: net
                .store()
                .entries()
                .iter()
                .map(|e| (e.name.clone(), e.var.as_tensor().detach()))
                .collect(),
            metadata: Default::default(),
            source: format!("{} network", net.arch()),
        };
        Self::fold(&file, net.arch(), net.device())
    }

    /// Load an already folded (exported) file of `arch`; f16/bf16 tensors were converted to
    /// f32 when the file was read.
    pub fn load(file: &TensorFile, arch: Arch, device: &Device) -> Result<Self> {
        let mut src = Folded(Lookup::new(file, arch, device));
        let trunk = Self::build(&mut src, arch)?;
        src.0.finish("folded trunk")?;
        Ok(Self {
            arch,
            trunk,
            device: device.clone(),
        })
    }

    fn build(src: &mut dyn Source, arch: Arch) -> Result<Trunk> {
        Ok(match Family::of(arch) {
            Family::ResNet { counts, bottleneck } => {
                Trunk::ResNet(ResNetTrunk::load(src, counts, bottleneck)?)
            }
            Family::DenseNet { layers } => Trunk::DenseNet(DenseNetTrunk::load(src, layers)?),
        })
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.arch
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The last feature map [N, C, h, w] of a normalised NCHW batch (DenseNet: after the final
    /// ReLU), as [`crate::Backbone::feature_map_t`] in evaluation mode.
    pub fn feature_map(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(match &self.trunk {
            Trunk::ResNet(t) => t.feature_map(xs)?,
            Trunk::DenseNet(t) => t.feature_map(xs)?,
        })
    }

    /// Global-average-pooled features [N, F] of a normalised NCHW batch.
    pub fn features(&self, xs: &Tensor) -> Result<Tensor> {
        let run = || Ok(global_avg_pool(&self.feature_map(xs)?)?);
        // A batch smaller than the thread count splits each convolution over the threads:
        // run it from inside the pool ([`crate::parallel::on_pool`]; DenseNet-121 at batch 1 +15%
        // natively). So does a single sample on one thread: from outside, each of its
        // parallel loops was handed to the pool's one thread while the caller slept, two
        // context switches a loop. Larger batches split by samples and stay on the calling
        // thread: their large activations, allocated on a pool thread, came from glibc's
        // per-thread arenas instead of the main heap the binary tunes, and DenseNet-121 at
        // batch 32 lost 20%.
        if xs.dim(0)? < crate::parallel::threads().max(2) {
            crate::parallel::on_pool(run)
        } else {
            run()
        }
    }

    /// Every tensor under its folded name (see the module documentation), in torchvision's
    /// state-dict order, f32 on the network's device.
    pub fn tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        match &self.trunk {
            Trunk::ResNet(t) => t.tensors(&mut out)?,
            Trunk::DenseNet(t) => t.tensors(&mut out)?,
        }
        Ok(out)
    }

    /// Number of scalar values in the folded tensors.
    pub fn parameter_count(&self) -> Result<usize> {
        Ok(self.tensors()?.iter().map(|(_, t)| t.elem_count()).sum())
    }
}
