//! Optimisers (SGD with momentum, AdamW) and learning-rate schedules with PyTorch semantics.
//!
//! Parameters are organised in [`ParamGroup`]s that share a learning-rate multiplier, a weight
//! decay and a frozen flag, like the `param_groups` of a `torch.optim.Optimizer`. The base
//! learning rate is passed to every [`Optimizer::step`]; a schedule ([`LrSchedule`]) computes
//! it from the iteration number.
//!
//! The update formulas follow `torch.optim.SGD` and `torch.optim.AdamW` (single-tensor code
//! path) operation by operation, in the parameter's dtype. PyTorch's vectorised CPU kernels
//! fuse some multiply-adds (`add(.., alpha=..)`, `lerp`) into FMA instructions, which candle's
//! element-wise ops cannot express, so results agree with PyTorch to within rounding (about
//! one ulp per step), not bit for bit.

mod adamw;
mod schedule;
mod sgd;

use std::collections::{HashMap, HashSet};

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

pub use adamw::{AdamW, AdamWConfig};
pub use schedule::{LrSchedule, ScheduleKind};
pub use sgd::{Sgd, SgdConfig};

use crate::{Error, Result};

/// A set of parameters sharing hyper-parameters.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// Group name, e.g. `"trunk"`, `"heads"`, `"trunk_no_decay"`.
    pub name: String,
    /// `(state-dict name, variable)` pairs.
    pub params: Vec<(String, Var)>,
    /// The group's learning rate is the base learning rate times this (heads use τ, e.g. 5.0).
    pub lr_scale: f64,
    /// Weight decay; 0.0 for no-decay groups (batch-norm parameters, biases).
    pub weight_decay: f64,
    /// A frozen group is never updated, and no optimiser state is created or changed for it.
    pub frozen: bool,
}

impl ParamGroup {
    /// A trainable group with `lr_scale` 1 and no weight decay.
    pub fn new(name: impl Into<String>, params: Vec<(String, Var)>) -> Self {
        Self {
            name: name.into(),
            params,
            lr_scale: 1.0,
            weight_decay: 0.0,
            frozen: false,
        }
    }
}

/// An optimiser over named parameter groups.
pub trait Optimizer {
    /// One update at base learning rate `lr`. A trainable parameter with no entry in `grads`
    /// is treated as having a zero gradient: weight decay and momentum still act (PyTorch with
    /// zero-filled `.grad`). Frozen groups are skipped entirely.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()>;

    /// The parameter groups, in construction order.
    fn groups(&self) -> &[ParamGroup];

    /// Freeze or unfreeze the group called `group`; an error if there is no such group.
    fn set_frozen(&mut self, group: &str, frozen: bool) -> Result<()>;

    /// Optimiser state for checkpoints, in a deterministic order (groups, then parameters, in
    /// construction order). Keys are `"sgd.momentum_buffer.<param>"`, `"adamw.exp_avg.<param>"`,
    /// `"adamw.exp_avg_sq.<param>"` and `"adamw.step.<param>"` (a rank-0 f64 tensor on the CPU;
    /// the others are on the parameter's device, in its dtype).
    /// Parameters that have no state yet (never stepped) have no entries.
    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>>;

    /// Restore from [`Optimizer::state_tensors`] output, replacing all current state
    /// (parameters without entries get fresh state). Validates everything before changing
    /// anything; the error names the offending key on a shape mismatch or an unknown parameter.
    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()>;
}

/// Checks shared by the optimisers' constructors; returns a map from parameter name to
/// `(group index, parameter index)`.
fn validate_groups(groups: &[ParamGroup]) -> Result<HashMap<String, (usize, usize)>> {
    let mut group_names = HashSet::new();
    let mut index = HashMap::new();
    let mut ids = HashMap::new();
    for (gi, group) in groups.iter().enumerate() {
        if !group_names.insert(group.name.as_str()) {
            return Err(Error::invalid(format!(
                "optimiser: duplicate parameter group name {:?}",
                group.name
            )));
        }
        if !(group.lr_scale >= 0.0 && group.lr_scale.is_finite()) {
            return Err(Error::invalid(format!(
                "optimiser: group {:?} has invalid lr_scale {} (must be finite and >= 0)",
                group.name, group.lr_scale
            )));
        }
        if !(group.weight_decay >= 0.0 && group.weight_decay.is_finite()) {
            return Err(Error::invalid(format!(
                "optimiser: group {:?} has invalid weight_decay {} (must be finite and >= 0)",
                group.name, group.weight_decay
            )));
        }
        for (pi, (name, var)) in group.params.iter().enumerate() {
            if !var.dtype().is_float() {
                return Err(Error::invalid(format!(
                    "optimiser: parameter {name:?} in group {:?} has non-float dtype {:?}",
                    group.name,
                    var.dtype()
                )));
            }
            if let Some((g0, _)) = index.insert(name.clone(), (gi, pi)) {
                return Err(Error::invalid(format!(
                    "optimiser: parameter {name:?} is listed in groups {:?} and {:?}",
                    groups[g0].name, group.name
                )));
            }
            if let Some(other) = ids.insert(var.as_tensor().id(), name.as_str()) {
                return Err(Error::invalid(format!(
                    "optimiser: parameters {other:?} and {name:?} are the same variable"
                )));
            }
        }
    }
    Ok(index)
}

/// Freeze or unfreeze a group by name.
fn set_group_frozen(groups: &mut [ParamGroup], group: &str, frozen: bool) -> Result<()> {
    match groups.iter_mut().find(|g| g.name == group) {
        Some(g) => {
            g.frozen = frozen;
            Ok(())
        }
        None => Err(Error::invalid(format!(
            "optimiser: no parameter group called {group:?} (groups: {:?})",
            groups.iter().map(|g| g.name.as_str()).collect::<Vec<_>>()
        ))),
    }
}

/// Rejects negative or non-finite learning rates.
fn check_lr(lr: f64) -> Result<()> {
    if lr >= 0.0 && lr.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "optimiser: invalid learning rate {lr} (must be finite and >= 0)"
        )))
    }
}

/// The gradient of `var`, or zeros when it has none. Errors if its shape does not match.
fn grad_or_zeros(grads: &GradStore, name: &str, var: &Var) -> Result<(Tensor, bool)> {
    match grads.get(var.as_tensor()) {
        Some(g) => {
            if g.shape() != var.shape() {
                return Err(Error::invalid(format!(
                    "optimiser: gradient of {name:?} has shape {:?}, parameter has {:?}",
                    g.shape(),
                    var.shape()
                )));
            }
            Ok((g.to_dtype(var.dtype())?.detach(), false))
        }
        None => Ok((var.as_tensor().zeros_like()?.detach(), true)),
    }
}

/// A state tensor for parameter `var` loaded from a checkpoint: checked against the parameter's
/// shape, converted to its dtype and device, and copied so it shares no storage with the caller.
fn load_like(key: &str, t: &Tensor, var: &Var) -> Result<Tensor> {
    if t.shape() != var.shape() {
        return Err(Error::invalid(format!(
            "optimiser state {key:?}: shape {:?} does not match parameter shape {:?}",
            t.shape(),
            var.shape()
        )));
    }
    Ok(t.to_device(var.device())?.to_dtype(var.dtype())?.copy()?)
}

/// Splits `"<prefix><param>"` keys; returns the parameter's location or an error naming `key`.
fn locate(
    key: &str,
    param: &str,
    index: &HashMap<String, (usize, usize)>,
) -> Result<(usize, usize)> {
    index.get(param).copied().ok_or_else(|| {
        Error::invalid(format!(
            "optimiser state {key:?}: unknown parameter {param:?}"
        ))
    })
}

#[cfg(test)]
mod tests;
