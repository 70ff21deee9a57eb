//! The paper's BatchNorm adaptation of a pre-trained network to new data (mtdp's
//! `adapt_batch_norm`): before training starts from weights learned elsewhere, every BatchNorm
//! layer's running statistics are re-estimated on the new images, and its affine parameters
//! are compensated so that the layer's evaluation-mode output is unchanged.
//!
//! For a layer with running mean `μ`, variance `σ²`, scale `γ` and shift `β`, and the new
//! estimates `μ'`, `σ'²` of its input on the new data:
//!
//! ```text
//! γ' = γ · √(σ'² + ε) / √(σ² + ε)
//! β' = β + γ · (μ' − μ) / √(σ² + ε)
//! ```
//!
//! so `γ'(x − μ')/√(σ'² + ε) + β' = γ(x − μ)/√(σ² + ε) + β` for every `x`. Because no
//! layer's output changes, every layer's input statistics come from the same evaluation-mode
//! forwards, all at once. What changes is training: the batch statistics a training-mode
//! forward normalises with now match the running ones, so the first steps do not see
//! mis-scaled activations.

use candle_core::Tensor;

use crate::layers::{collect_input_moments, BN_EPS};
use crate::network::Network;
use crate::{Error, Result};

/// What [`adapt_batch_norm`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptReport {
    /// BatchNorm layers adapted.
    pub layers: usize,
    /// Images forwarded.
    pub images: usize,
    /// Largest relative change of a running standard deviation, `max |σ'/σ − 1|` (how far
    /// the new data's statistics were from the old ones).
    pub max_std_change: f64,
}

/// Re-estimate every trunk BatchNorm layer's running statistics on `batches` (normalised NCHW
/// images, e.g. ~20 mixed-task batches), compensating `weight`/`bias` so the network's
/// evaluation-mode output is unchanged. Layers no batch reached are left as they are.
pub fn adapt_batch_norm(net: &Network, batches: &[Tensor]) -> Result<AdaptReport> {
    if batches.is_empty() {
        return Err(Error::invalid(
            "BatchNorm adaptation needs at least one batch of images",
        ));
    }
    let moments = collect_input_moments(|| {
        for x in batches {
            net.features_t(x, false)?;
        }
        Ok(())
    })?;
    let store = net.store();
    let tensor = |name: &str| -> Result<Vec<f64>> {
        let e = store
            .get(name)
            .ok_or_else(|| Error::invalid(format!("BatchNorm tensor `{name}` missing")))?;
        Ok(e.var
            .as_tensor()
            .to_dtype(candle_core::DType::F64)?
            .to_vec1()?)
    };
    let set = |name: &str, values: Vec<f64>| -> Result<()> {
        let var = &store
            .get(name)
            .ok_or_else(|| Error::invalid(format!("BatchNorm tensor `{name}` missing")))?
            .var;
        let t = Tensor::from_vec(values, var.as_tensor().dims(), var.device())?
            .to_dtype(var.dtype())?;
        var.set(&t)?;
        Ok(())
    };
    let mut report = AdaptReport {
        layers: 0,
        images: batches.iter().map(|b| b.dims()[0]).sum(),
        max_std_change: 0.0,
    };
    for entry in store.entries() {
        let Some(prefix) = entry.name.strip_suffix("running_mean") else {
            continue;
        };
        let Some(m) = moments.get(&entry.var.as_tensor().id()) else {
            continue;
        };
        let (new_mean, new_var) = m.mean_var();
        let (mean, var) = (
            tensor(&entry.name)?,
            tensor(&format!("{prefix}running_var"))?,
        );
        let (gamma, beta) = (
            tensor(&format!("{prefix}weight"))?,
            tensor(&format!("{prefix}bias"))?,
        );
        let mut new_gamma = Vec::with_capacity(gamma.len());
        let mut new_beta = Vec::with_capacity(beta.len());
        for c in 0..gamma.len() {
            let (sd, new_sd) = ((var[c] + BN_EPS).sqrt(), (new_var[c] + BN_EPS).sqrt());
            new_gamma.push(gamma[c] * new_sd / sd);
            new_beta.push(beta[c] + gamma[c] * (new_mean[c] - mean[c]) / sd);
            report.max_std_change = report.max_std_change.max((new_sd / sd - 1.0).abs());
        }
        set(&format!("{prefix}weight"), new_gamma)?;
        set(&format!("{prefix}bias"), new_beta)?;
        set(&entry.name, new_mean)?;
        set(&format!("{prefix}running_var"), new_var)?;
        report.layers += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::Arch;
    use crate::network::NetworkSpec;
    use candle_core::Device;

    /// Images unlike the ones a fresh network's statistics describe: shifted and scaled.
    fn batches(dev: &Device, n: usize) -> Vec<Tensor> {
        (0..n)
            .map(|i| {
                let x = Tensor::randn(0f32, 1.0, (4, 3, 32, 32), dev).unwrap();
                ((x * (2.0 + i as f64 * 0.1)).unwrap() + 0.7).unwrap()
            })
            .collect()
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> f64 {
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        a.iter()
            .zip(&b)
            .map(|(x, y)| f64::from((x - y).abs() / scale))
            .fold(0.0, f64::max)
    }

    fn check(arch: Arch) {
        let dev = Device::Cpu;
        let net = Network::new(NetworkSpec::trunk(arch), &dev, 3).unwrap();
        // Move the statistics away from their initial values first, as a trained net's are.
        for x in batches(&dev, 3) {
            net.features_t(&x, true).unwrap();
        }
        let data = batches(&dev, 5);
        let probe = Tensor::randn(0f32, 1.5, (2, 3, 32, 32), &dev).unwrap();
        let before = net.features_t(&probe, false).unwrap();
        let report = adapt_batch_norm(&net, &data).unwrap();
        assert!(report.layers > 10, "{report:?}");
        assert_eq!(report.images, 20);
        assert!(report.max_std_change > 0.1, "{report:?}");

        let after = net.features_t(&probe, false).unwrap();
        let d = max_rel_diff(&before, &after);
        assert!(d < 1e-5, "{arch}: output changed by {d}");

        let first = if arch.name().starts_with("resnet") {
            "bn1"
        } else {
            "features.norm0"
        };
        // The running statistics are now the estimate: a second collection over the same data
        // (the layer's inputs are unchanged) gives them back.
        let moments = collect_input_moments(|| {
            for x in &data {
                net.features_t(x, false)?;
            }
            Ok(())
        })
        .unwrap();
        let rm = &net
            .store()
            .get(&format!("{first}.running_mean"))
            .unwrap()
            .var;
        let rv = &net
            .store()
            .get(&format!("{first}.running_var"))
            .unwrap()
            .var;
        let (m, v) = moments[&rm.as_tensor().id()].mean_var();
        let got_m = rm.as_tensor().to_vec1::<f32>().unwrap();
        let got_v = rv.as_tensor().to_vec1::<f32>().unwrap();
        for c in 0..m.len() {
            assert!((f64::from(got_m[c]) - m[c]).abs() <= 1e-4 * (1.0 + m[c].abs()));
            assert!((f64::from(got_v[c]) - v[c]).abs() <= 1e-4 * (1.0 + v[c]));
        }
    }

    #[test]
    fn resnet_output_unchanged_and_stats_re_estimated() {
        check(Arch::ResNet18);
    }

    #[test]
    fn densenet_output_unchanged_and_stats_re_estimated() {
        check(Arch::DenseNet121);
    }

    #[test]
    fn no_batches_is_an_error() {
        let net = Network::new(NetworkSpec::trunk(Arch::ResNet18), &Device::Cpu, 0).unwrap();
        assert!(adapt_batch_norm(&net, &[]).is_err());
    }
}
