//! A trunk with an optional torchvision classifier and any number of task heads.

use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Serialize};

use crate::backbone::{Arch, Backbone};
use crate::layers::Linear;
use crate::varstore::VarStore;
use crate::{Error, Result};

/// Prefix of task heads in state dicts: `heads.<index>.weight`.
pub const HEADS_PREFIX: &str = "heads";

/// One task's linear head.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadSpec {
    /// Task name (e.g. `lc25000-lung`).
    pub name: String,
    /// Class names, in the order of the head's outputs.
    pub classes: Vec<String>,
}

/// What a [`Network`] is made of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// The trunk architecture.
    pub arch: Arch,
    /// Outputs of torchvision's own classifier (`fc` / `classifier`), if kept (1000 for ImageNet).
    pub classifier: Option<usize>,
    /// Task heads, stored as `heads.0`, `heads.1`, … in this order.
    pub heads: Vec<HeadSpec>,
}

impl NetworkSpec {
    /// A trunk alone: what feature extraction needs.
    pub fn trunk(arch: Arch) -> Self {
        Self {
            arch,
            classifier: None,
            heads: Vec::new(),
        }
    }

    /// torchvision's full model with an `n`-way classifier.
    pub fn classifier(arch: Arch, n: usize) -> Self {
        Self {
            arch,
            classifier: Some(n),
            heads: Vec::new(),
        }
    }

    /// A multi-task model: trunk plus one head per task.
    pub fn multitask(arch: Arch, heads: Vec<HeadSpec>) -> Self {
        Self {
            arch,
            classifier: None,
            heads,
        }
    }
}

/// A model: trunk, optional torchvision classifier, task heads, and the store of their tensors.
#[derive(Debug)]
pub struct Network {
    spec: NetworkSpec,
    store: VarStore,
    backbone: Backbone,
    classifier: Option<Linear>,
    heads: Vec<Linear>,
}

impl Network {
    /// Build with torchvision's random initialisation, drawn from `seed`.
    pub fn new(spec: NetworkSpec, device: &Device, seed: u64) -> Result<Self> {
        Self::with_dtype(spec, device, DType::F32, seed)
    }

    /// Like [`Network::new`] with floating tensors of `dtype`.
    pub fn with_dtype(spec: NetworkSpec, device: &Device, dtype: DType, seed: u64) -> Result<Self> {
        for h in &spec.heads {
            if h.classes.len() < 2 {
                return Err(Error::invalid(format!(
                    "task `{}` has {} class(es); a head needs at least two",
                    h.name,
                    h.classes.len()
                )));
            }
        }
        if spec.classifier == Some(0) {
            return Err(Error::invalid("a classifier needs at least one output"));
        }
        let mut store = VarStore::with_dtype(device, dtype, seed);
        let mut root = store.root();
        let backbone = Backbone::new(spec.arch, &mut root)?;
        let dim = spec.arch.feature_dim();
        let classifier = match spec.classifier {
            Some(n) => {
                let mut b = root.pp(spec.arch.classifier_name());
                Some(match spec.arch {
                    Arch::DenseNet121 | Arch::DenseNet169 => Linear::new_zero_bias(&mut b, dim, n)?,
                    _ => Linear::new(&mut b, dim, n)?,
                })
            }
            None => None,
        };
        let mut heads = Vec::with_capacity(spec.heads.len());
        {
            let mut hb = root.pp(HEADS_PREFIX);
            for (i, h) in spec.heads.iter().enumerate() {
                heads.push(Linear::new(
                    &mut hb.pp(i.to_string()),
                    dim,
                    h.classes.len(),
                )?);
            }
        }
        Ok(Self {
            spec,
            store,
            backbone,
            classifier,
            heads,
        })
    }

    /// What the network is made of.
    pub fn spec(&self) -> &NetworkSpec {
        &self.spec
    }

    /// The architecture of the trunk.
    pub fn arch(&self) -> Arch {
        self.spec.arch
    }

    /// Every tensor, in state-dict order.
    pub fn store(&self) -> &VarStore {
        &self.store
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &Device {
        self.store.device()
    }

    /// The trunk.
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// Task heads, in the order of [`NetworkSpec::heads`].
    pub fn heads(&self) -> &[Linear] {
        &self.heads
    }

    /// Whether a state-dict name belongs to the trunk (not a classifier or a head).
    pub fn is_trunk_name(&self, name: &str) -> bool {
        let cls = self.spec.arch.classifier_name();
        !(name.starts_with(&format!("{cls}.")) || name.starts_with(&format!("{HEADS_PREFIX}.")))
    }

    /// Global-average-pooled features [N, F] of a normalised NCHW batch.
    pub fn features_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.backbone.features_t(xs, train)?)
    }

    /// torchvision's full forward: features then `fc` / `classifier`.
    pub fn logits_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let cls = self.classifier.as_ref().ok_or_else(|| {
            Error::invalid("this network has no torchvision classifier (trunk or multi-task model)")
        })?;
        Ok(cls.forward(&self.features_t(xs, train)?)?)
    }

    /// Logits of head `task` for features [N, F].
    pub fn head_logits(&self, task: usize, features: &Tensor) -> Result<Tensor> {
        let head = self.heads.get(task).ok_or_else(|| {
            Error::invalid(format!(
                "task index {task} out of range: the model has {} heads",
                self.heads.len()
            ))
        })?;
        Ok(head.forward(features)?)
    }
}
