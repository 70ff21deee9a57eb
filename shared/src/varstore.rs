//! An ordered store of named model tensors: trainable parameters and buffers.
//!
//! candle-nn's `VarMap` is an unordered map and does not tell parameters from buffers. Here
//! every tensor is registered once, in the order torchvision's `state_dict()` lists it, with
//! its kind, so that saving, gradient-norm reports and optimiser groups follow PyTorch.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

use crate::{Error, Result};

/// Whether a stored tensor is learned by gradient descent or is running state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorKind {
    /// A trainable parameter (handed to optimisers).
    Parameter,
    /// A buffer such as BatchNorm running statistics (never handed to an optimiser).
    Buffer,
}

/// One registered tensor.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Full state-dict name, e.g. `layer1.0.bn1.running_mean`.
    pub name: String,
    /// The variable; clones of it share storage, so layers see `set` updates.
    pub var: Var,
    /// Parameter or buffer.
    pub kind: TensorKind,
}

/// How a new tensor is initialised.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    /// Every element is this value.
    Const(f64),
    /// Normal with mean 0 and this standard deviation.
    Normal(f64),
    /// Uniform on `[-bound, bound]`.
    Uniform(f64),
}

/// Ordered registry of a model's tensors.
#[derive(Debug)]
pub struct VarStore {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    device: Device,
    dtype: DType,
    rng: StdRng,
}

impl VarStore {
    /// An empty store whose random initialisations are drawn from a generator seeded with `seed`.
    pub fn new(device: &Device, seed: u64) -> Self {
        Self::with_dtype(device, DType::F32, seed)
    }

    /// Like [`VarStore::new`] with floating tensors of `dtype` (f64 for gradient checks).
    pub fn with_dtype(device: &Device, dtype: DType, seed: u64) -> Self {
        Self {
            entries: Vec::new(),
            index: HashMap::new(),
            device: device.clone(),
            dtype,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// The dtype of floating tensors.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device tensors are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A builder that registers names under `prefix` (joined with `.`).
    pub fn root(&mut self) -> Builder<'_> {
        Builder {
            store: self,
            prefix: String::new(),
        }
    }

    /// All entries in registration (state-dict) order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry of that name, if any.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }

    /// Trainable parameters in state-dict order.
    pub fn parameters(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| e.kind == TensorKind::Parameter)
    }

    /// Number of scalar values in the trainable parameters.
    pub fn parameter_count(&self) -> usize {
        self.parameters().map(|e| e.var.elem_count()).sum()
    }

    fn register(&mut self, name: String, tensor: Tensor, kind: TensorKind) -> Result<Var> {
        if self.index.contains_key(&name) {
            return Err(Error::invalid(format!(
                "internal error: tensor `{name}` registered twice"
            )));
        }
        let var = Var::from_tensor(&tensor)?;
        self.index.insert(name.clone(), self.entries.len());
        self.entries.push(Entry {
            name,
            var: var.clone(),
            kind,
        });
        Ok(var)
    }

    fn init_tensor(&mut self, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = match init {
            Init::Const(v) => vec![v as f32; n],
            Init::Normal(std) => {
                let dist = Normal::new(0.0f64, std)
                    .map_err(|e| Error::invalid(format!("bad normal init: {e}")))?;
                (0..n).map(|_| dist.sample(&mut self.rng) as f32).collect()
            }
            Init::Uniform(bound) => (0..n)
                .map(|_| self.rng.random_range(-bound..=bound) as f32)
                .collect(),
        };
        Ok(Tensor::from_vec(values, shape, &self.device)?.to_dtype(self.dtype)?)
    }
}

/// Registers tensors under a name prefix; cheap to create with [`Builder::pp`].
pub struct Builder<'a> {
    store: &'a mut VarStore,
    prefix: String,
}

impl Builder<'_> {
    /// A builder for the child scope `name` (`prefix.name`).
    pub fn pp(&mut self, name: impl AsRef<str>) -> Builder<'_> {
        let prefix = self.full_name(name.as_ref());
        Builder {
            store: self.store,
            prefix,
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Register a trainable f32 parameter.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let t = self.store.init_tensor(shape, init)?;
        let full = self.full_name(name);
        self.store.register(full, t, TensorKind::Parameter)
    }

    /// Register an f32 buffer.
    pub fn buffer(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Var> {
        let t = self.store.init_tensor(shape, init)?;
        let full = self.full_name(name);
        self.store.register(full, t, TensorKind::Buffer)
    }

    /// Register an i64 scalar buffer (BatchNorm's `num_batches_tracked`).
    pub fn counter(&mut self, name: &str) -> Result<Var> {
        let t = Tensor::zeros((), DType::I64, &self.store.device)?;
        let full = self.full_name(name);
        self.store.register(full, t, TensorKind::Buffer)
    }
}
