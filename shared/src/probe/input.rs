//! Checks on user input, so that solvers see only well-formed data.

use crate::{Error, Result};

/// Check a feature matrix `x` (`n × d`, row-major): sizes agree and every value is finite.
pub(crate) fn check_features(x: &[f32], n: usize, d: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::invalid("probe: no samples (n = 0)"));
    }
    if d == 0 {
        return Err(Error::invalid("probe: no features (d = 0)"));
    }
    let expected = n
        .checked_mul(d)
        .ok_or_else(|| Error::invalid(format!("probe: {n} × {d} features overflow")))?;
    if x.len() != expected {
        return Err(Error::invalid(format!(
            "probe: {} feature values for {n} samples × {d} features (expected {expected})",
            x.len()
        )));
    }
    if let Some(pos) = x.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid(format!(
            "probe: feature {} of sample {} is {} (features must be finite)",
            pos % d,
            pos / d,
            x[pos]
        )));
    }
    Ok(())
}

/// Check training data: the features ([`check_features`]) and their labels
/// ([`check_labels`]).
pub(crate) fn check_training(
    x: &[f32],
    n: usize,
    d: usize,
    y: &[u32],
    n_classes: usize,
) -> Result<()> {
    check_features(x, n, d)?;
    check_labels(y, n, n_classes)
}

/// Check labels: one per sample, in `0..n_classes`, at least two classes, and every class
/// present (a class without samples has no finite logistic optimum, and its probe would be
/// meaningless).
pub(crate) fn check_labels(y: &[u32], n: usize, n_classes: usize) -> Result<()> {
    if y.len() != n {
        return Err(Error::invalid(format!(
            "probe: {} labels for {n} samples",
            y.len()
        )));
    }
    if n_classes < 2 {
        return Err(Error::invalid(format!(
            "probe: need at least 2 classes, got n_classes = {n_classes}"
        )));
    }
    let mut counts = vec![0usize; n_classes];
    for (i, &label) in y.iter().enumerate() {
        let slot = counts.get_mut(label as usize).ok_or_else(|| {
            Error::invalid(format!(
                "probe: label {label} of sample {i} is not below n_classes = {n_classes}"
            ))
        })?;
        *slot += 1;
    }
    let missing: Vec<usize> = (0..n_classes).filter(|&k| counts[k] == 0).collect();
    if !missing.is_empty() {
        return Err(Error::invalid(format!(
            "probe: class(es) {missing:?} have no samples; every class in 0..{n_classes} needs \
             at least one (remap labels to the classes present)"
        )));
    }
    Ok(())
}

/// Check a regularisation constant and solver settings.
pub(crate) fn check_settings(c: f64, max_iter: usize, tol: f64) -> Result<()> {
    if !(c.is_finite() && c > 0.0) {
        return Err(Error::invalid(format!(
            "probe: C must be positive and finite, got {c}"
        )));
    }
    if max_iter == 0 {
        return Err(Error::invalid("probe: max_iter must be at least 1"));
    }
    if !(tol.is_finite() && tol > 0.0) {
        return Err(Error::invalid(format!(
            "probe: tol must be positive and finite, got {tol}"
        )));
    }
    Ok(())
}

/// `x` widened to f64.
pub(crate) fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}
