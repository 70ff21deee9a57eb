//! Stochastic gradient descent with momentum, as `torch.optim.SGD` (dampening 0).

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::{
    check_lr, grad_or_zeros, load_like, locate, set_group_frozen, validate_groups, Optimizer,
    ParamGroup,
};
use crate::{Error, Result};

const BUF_PREFIX: &str = "sgd.momentum_buffer.";

/// SGD hyper-parameters shared by all groups (learning rate and weight decay are per group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    /// Momentum factor; 0 disables the momentum buffer.
    pub momentum: f64,
    /// Nesterov momentum (requires `momentum > 0`).
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            nesterov: false,
        }
    }
}

/// SGD with momentum and (coupled, L2) weight decay, exactly `torch.optim.SGD` with
/// `dampening=0, maximize=False`:
///
/// ```text
/// g = g + wd * p                      (if wd != 0)
/// buf = g  (first step) | buf = momentum * buf + g
/// g = g + momentum * buf  (nesterov) | g = buf
/// p = p - lr * g
/// ```
#[derive(Debug)]
pub struct Sgd {
    groups: Vec<ParamGroup>,
    cfg: SgdConfig,
    index: HashMap<String, (usize, usize)>,
    /// Momentum buffers, `[group][param]`; `None` until the parameter's first step.
    /// Buffers are immutable tensors replaced on each step, so tensors handed out by
    /// `state_tensors` never change afterwards.
    buffers: Vec<Vec<Option<Tensor>>>,
}

impl Sgd {
    /// Build the optimiser; rejects duplicate group or parameter names, a variable listed
    /// twice, non-float variables, negative `lr_scale`/weight decay/momentum, and Nesterov
    /// without momentum.
    pub fn new(groups: Vec<ParamGroup>, cfg: SgdConfig) -> Result<Self> {
        if !(cfg.momentum >= 0.0 && cfg.momentum.is_finite()) {
            return Err(Error::invalid(format!(
                "sgd: invalid momentum {} (must be finite and >= 0)",
                cfg.momentum
            )));
        }
        if cfg.nesterov && cfg.momentum == 0.0 {
            return Err(Error::invalid(
                "sgd: nesterov momentum requires momentum > 0",
            ));
        }
        let index = validate_groups(&groups)?;
        let buffers = groups.iter().map(|g| vec![None; g.params.len()]).collect();
        Ok(Self {
            groups,
            cfg,
            index,
            buffers,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SgdConfig {
        &self.cfg
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        check_lr(lr)?;
        let momentum = self.cfg.momentum;
        for (group, buffers) in self.groups.iter().zip(self.buffers.iter_mut()) {
            if group.frozen {
                continue;
            }
            let group_lr = lr * group.lr_scale;
            let wd = group.weight_decay;
            for ((name, var), slot) in group.params.iter().zip(buffers.iter_mut()) {
                // Detached: state computed from the parameter must not keep the autograd graph
                // (and through it every previous step) alive.
                let p = var.as_tensor().detach();
                let (mut g, mut fresh) = grad_or_zeros(grads, name, var)?;
                if wd != 0.0 {
                    // grad.add(param, alpha=wd)
                    g = g.add(&p.affine(wd, 0.0)?)?;
                    fresh = true;
                }
                if momentum != 0.0 {
                    let buf = match slot {
                        // buf = torch.clone(grad): never share storage with the caller's grad.
                        None if fresh => g.clone(),
                        None => g.copy()?,
                        // buf.mul_(momentum).add_(grad)
                        Some(buf) => buf.affine(momentum, 0.0)?.add(&g)?,
                    };
                    g = if self.cfg.nesterov {
                        // grad.add(buf, alpha=momentum)
                        g.add(&buf.affine(momentum, 0.0)?)?
                    } else {
                        buf.clone()
                    };
                    *slot = Some(buf);
                }
                // param.add_(grad, alpha=-lr)
                let update = g.affine(group_lr, 0.0)?;
                var.set(&p.sub(&update)?)?;
            }
        }
        Ok(())
    }

    fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    fn set_frozen(&mut self, group: &str, frozen: bool) -> Result<()> {
        set_group_frozen(&mut self.groups, group, frozen)
    }

    fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (group, buffers) in self.groups.iter().zip(self.buffers.iter()) {
            for ((name, _), buf) in group.params.iter().zip(buffers.iter()) {
                if let Some(buf) = buf {
                    out.push((format!("{BUF_PREFIX}{name}"), buf.clone()));
                }
            }
        }
        Ok(out)
    }

    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        let mut buffers: Vec<Vec<Option<Tensor>>> = self
            .groups
            .iter()
            .map(|g| vec![None; g.params.len()])
            .collect();
        // Sorted keys so that the first error reported does not depend on hash order.
        let mut keys: Vec<&String> = state.keys().collect();
        keys.sort();
        for key in keys {
            let Some(param) = key.strip_prefix(BUF_PREFIX) else {
                return Err(Error::invalid(format!(
                    "optimiser state {key:?}: not an SGD state key (expected \"{BUF_PREFIX}<param>\")"
                )));
            };
            if self.cfg.momentum == 0.0 {
                return Err(Error::invalid(format!(
                    "optimiser state {key:?}: this SGD has momentum 0 and keeps no buffers"
                )));
            }
            let (gi, pi) = locate(key, param, &self.index)?;
            let var = &self.groups[gi].params[pi].1;
            buffers[gi][pi] = Some(load_like(key, &state[key], var)?);
        }
        self.buffers = buffers;
        Ok(())
    }
}
