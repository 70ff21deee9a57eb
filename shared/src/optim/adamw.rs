//! AdamW (decoupled weight decay), as `torch.optim.AdamW` with `amsgrad=False`.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, DeviceLocation, Tensor};
use serde::{Deserialize, Serialize};

use super::{
    check_lr, grad_or_zeros, load_like, locate, set_group_frozen, validate_groups, Optimizer,
    ParamGroup,
};
use crate::{Error, Result};

const EXP_AVG: &str = "adamw.exp_avg.";
const EXP_AVG_SQ: &str = "adamw.exp_avg_sq.";
const STEP: &str = "adamw.step.";

/// AdamW hyper-parameters shared by all groups (learning rate and weight decay are per group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    /// Decay rate of the first moment.
    pub beta1: f64,
    /// Decay rate of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Per-parameter state, created on the parameter's first (non-frozen) step.
#[derive(Debug, Clone)]
struct AdamState {
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: u64,
}

/// AdamW, exactly the single-tensor code path of `torch.optim.AdamW` (`amsgrad=False`,
/// `maximize=False`), with a step counter per parameter:
///
/// ```text
/// p = p * (1 - lr * wd)
/// m = lerp(m, g, 1 - b1);  v = b2 * v + ((1 - b2) * g) * g;  t += 1
/// step_size = lr / (1 - b1^t);  denom = sqrt(v) / sqrt(1 - b2^t) + eps
/// p = p + (-step_size * m) / denom
/// ```
#[derive(Debug)]
pub struct AdamW {
    groups: Vec<ParamGroup>,
    cfg: AdamWConfig,
    index: HashMap<String, (usize, usize)>,
    /// `[group][param]`; tensors are replaced, never mutated, on each step.
    state: Vec<Vec<Option<AdamState>>>,
}

impl AdamW {
    /// Build the optimiser; rejects duplicate group or parameter names, a variable listed
    /// twice, non-float variables, negative `lr_scale`/weight decay/eps and betas outside
    /// `[0, 1)`.
    pub fn new(groups: Vec<ParamGroup>, cfg: AdamWConfig) -> Result<Self> {
        for (name, beta) in [("beta1", cfg.beta1), ("beta2", cfg.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return Err(Error::invalid(format!(
                    "adamw: invalid {name} {beta} (must be in [0, 1))"
                )));
            }
        }
        if !(cfg.eps >= 0.0 && cfg.eps.is_finite()) {
            return Err(Error::invalid(format!(
                "adamw: invalid eps {} (must be finite and >= 0)",
                cfg.eps
            )));
        }
        let index = validate_groups(&groups)?;
        let state = groups.iter().map(|g| vec![None; g.params.len()]).collect();
        Ok(Self {
            groups,
            cfg,
            index,
            state,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }
}

/// `torch.lerp(start, end, weight)` for a scalar weight, with ATen's two-branch formula.
fn lerp(start: &Tensor, end: &Tensor, weight: f64) -> Result<Tensor> {
    let diff = end.sub(start)?;
    if weight.abs() < 0.5 {
        // start + weight * (end - start)
        Ok(start.add(&diff.affine(weight, 0.0)?)?)
    } else {
        // end - (end - start) * (1 - weight), with 1 - weight computed in the op dtype
        let one_minus = if start.dtype() == DType::F64 {
            1.0 - weight
        } else {
            (1.0f32 - weight as f32) as f64
        };
        Ok(end.sub(&diff.affine(one_minus, 0.0)?)?)
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        check_lr(lr)?;
        let AdamWConfig { beta1, beta2, eps } = self.cfg;
        // sqrt(1 - beta2^t) as a rank-0 tensor; built on the host (some backends have no f64)
        // and cached, since parameters usually share step count, dtype and device.
        let mut bc2_cache: Option<((u64, DType, DeviceLocation), Tensor)> = None;
        for (group, states) in self.groups.iter().zip(self.state.iter_mut()) {
            if group.frozen {
                continue;
            }
            let group_lr = lr * group.lr_scale;
            let wd = group.weight_decay;
            for ((name, var), slot) in group.params.iter().zip(states.iter_mut()) {
                let (g, _) = grad_or_zeros(grads, name, var)?;
                // Detached: state computed from the parameter must not keep the autograd graph
                // (and through it every previous step) alive.
                let p = var.as_tensor().detach();
                let (m, v, step) = match slot {
                    // Tensor clones share storage (cheap); the state is replaced, never mutated.
                    Some(s) => (s.exp_avg.clone(), s.exp_avg_sq.clone(), s.step),
                    None => (p.zeros_like()?, p.zeros_like()?, 0),
                };
                // exp_avg.lerp_(grad, 1 - beta1)
                let m = lerp(&m, &g, 1.0 - beta1)?;
                // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                let v = v
                    .affine(beta2, 0.0)?
                    .add(&g.affine(1.0 - beta2, 0.0)?.mul(&g)?)?;
                let step = step + 1;
                let t = step as f64;
                let bias_correction1 = 1.0 - beta1.powf(t);
                let bias_correction2 = 1.0 - beta2.powf(t);
                let step_size = group_lr / bias_correction1;
                let cache_key = (step, p.dtype(), p.device().location());
                let bc2_sqrt = match &bc2_cache {
                    Some((key, t)) if *key == cache_key => t.clone(),
                    _ => {
                        let t = Tensor::new(bias_correction2.sqrt(), &Device::Cpu)?
                            .to_dtype(p.dtype())?
                            .to_device(p.device())?;
                        bc2_cache = Some((cache_key, t.clone()));
                        t
                    }
                };
                // (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps): a true division, as
                // ATen's CPU kernel does (not a multiplication by the reciprocal).
                let denom = v.sqrt()?.broadcast_div(&bc2_sqrt)?.affine(1.0, eps)?;
                // param.mul_(1 - lr * weight_decay)
                let p = if wd != 0.0 {
                    p.affine(1.0 - group_lr * wd, 0.0)?
                } else {
                    p.clone()
                };
                // param.addcdiv_(exp_avg, denom, value=-step_size)
                let new_p = p.add(&m.affine(-step_size, 0.0)?.div(&denom)?)?;
                var.set(&new_p)?;
                *slot = Some(AdamState {
                    exp_avg: m,
                    exp_avg_sq: v,
                    step,
                });
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
        for (group, states) in self.groups.iter().zip(self.state.iter()) {
            for ((name, _), s) in group.params.iter().zip(states.iter()) {
                if let Some(s) = s {
                    out.push((format!("{EXP_AVG}{name}"), s.exp_avg.clone()));
                    out.push((format!("{EXP_AVG_SQ}{name}"), s.exp_avg_sq.clone()));
                    out.push((
                        format!("{STEP}{name}"),
                        Tensor::new(s.step as f64, &Device::Cpu)?,
                    ));
                }
            }
        }
        Ok(out)
    }

    fn load_state_tensors(&mut self, state: &HashMap<String, Tensor>) -> Result<()> {
        type Partial = (Option<Tensor>, Option<Tensor>, Option<u64>);
        let mut partial: Vec<Vec<Partial>> = self
            .groups
            .iter()
            .map(|g| vec![(None, None, None); g.params.len()])
            .collect();
        // Sorted keys so that the first error reported does not depend on hash order.
        let mut keys: Vec<&String> = state.keys().collect();
        keys.sort();
        for key in keys {
            let t = &state[key];
            if let Some(param) = key.strip_prefix(EXP_AVG_SQ) {
                let (gi, pi) = locate(key, param, &self.index)?;
                let var = &self.groups[gi].params[pi].1;
                partial[gi][pi].1 = Some(load_like(key, t, var)?);
            } else if let Some(param) = key.strip_prefix(EXP_AVG) {
                let (gi, pi) = locate(key, param, &self.index)?;
                let var = &self.groups[gi].params[pi].1;
                partial[gi][pi].0 = Some(load_like(key, t, var)?);
            } else if let Some(param) = key.strip_prefix(STEP) {
                let (gi, pi) = locate(key, param, &self.index)?;
                if t.rank() != 0 {
                    return Err(Error::invalid(format!(
                        "optimiser state {key:?}: step counter must be a scalar, got shape {:?}",
                        t.shape()
                    )));
                }
                let step = t
                    .to_device(&Device::Cpu)?
                    .to_dtype(DType::F64)?
                    .to_scalar::<f64>()?;
                if !(step >= 0.0 && step.fract() == 0.0 && step < 2f64.powi(53)) {
                    return Err(Error::invalid(format!(
                        "optimiser state {key:?}: invalid step counter {step}"
                    )));
                }
                partial[gi][pi].2 = Some(step as u64);
            } else {
                return Err(Error::invalid(format!(
                    "optimiser state {key:?}: not an AdamW state key (expected \
                     \"{EXP_AVG}<param>\", \"{EXP_AVG_SQ}<param>\" or \"{STEP}<param>\")"
                )));
            }
        }
        let mut new_state = Vec::with_capacity(partial.len());
        for (group, parts) in self.groups.iter().zip(partial) {
            let mut states = Vec::with_capacity(parts.len());
            for ((name, _), part) in group.params.iter().zip(parts) {
                states.push(match part {
                    (None, None, None) => None,
                    (Some(exp_avg), Some(exp_avg_sq), Some(step)) => Some(AdamState {
                        exp_avg,
                        exp_avg_sq,
                        step,
                    }),
                    (m, v, s) => {
                        let missing = [
                            (m.is_none(), EXP_AVG),
                            (v.is_none(), EXP_AVG_SQ),
                            (s.is_none(), STEP),
                        ]
                        .into_iter()
                        .filter(|(absent, _)| *absent)
                        .map(|(_, prefix)| format!("{prefix}{name}"))
                        .collect::<Vec<_>>();
                        return Err(Error::invalid(format!(
                            "optimiser state: incomplete AdamW state for {name:?}, missing {missing:?}"
                        )));
                    }
                });
            }
            new_state.push(states);
        }
        self.state = new_state;
        Ok(())
    }
}
