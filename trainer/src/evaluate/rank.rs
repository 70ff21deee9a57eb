//! Ranking models across tasks the way the paper selects hyper-parameters: rank the
//! candidates on each held-out task (1 = best), then order them by their average rank.

/// Ranks of `values` (higher is better → rank 1). Ties share the average of their ranks; a
/// NaN (no score) ranks after every number.
pub fn ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    let key = |i: usize| {
        if values[i].is_nan() {
            f64::NEG_INFINITY
        } else {
            values[i]
        }
    };
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)));
    let mut out = vec![0.0; values.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && key(order[j + 1]) == key(order[i]) {
            j += 1;
        }
        // Positions i..=j (0-based) share ranks i+1..=j+1.
        let shared = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = shared;
        }
        i = j + 1;
    }
    out
}

/// Average rank of each candidate over criteria: `scores[candidate][criterion]`, higher is
/// better. Every criterion ranks all candidates; the ranks are averaged per candidate.
pub fn average_ranks(scores: &[Vec<f64>]) -> Vec<f64> {
    let n_criteria = scores.iter().map(Vec::len).max().unwrap_or(0);
    if scores.is_empty() || n_criteria == 0 {
        return vec![f64::NAN; scores.len()];
    }
    let mut sum = vec![0.0; scores.len()];
    for k in 0..n_criteria {
        let column: Vec<f64> = scores
            .iter()
            .map(|row| row.get(k).copied().unwrap_or(f64::NAN))
            .collect();
        for (s, r) in sum.iter_mut().zip(ranks(&column)) {
            *s += r;
        }
    }
    sum.into_iter().map(|s| s / n_criteria as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_is_rank_one_and_ties_share_the_average() {
        assert_eq!(ranks(&[0.5, 0.9, 0.7]), vec![3.0, 1.0, 2.0]);
        assert_eq!(ranks(&[0.8, 0.8, 0.1, 0.8]), vec![2.0, 2.0, 4.0, 2.0]);
        assert_eq!(ranks(&[f64::NAN, 0.1]), vec![2.0, 1.0]);
        assert!(ranks(&[]).is_empty());
    }

    #[test]
    fn average_rank_over_tasks() {
        // Candidate 0 wins task A, candidate 1 wins B and C: 1 is first on average.
        let scores = vec![
            vec![0.9, 0.5, 0.6],
            vec![0.8, 0.7, 0.7],
            vec![0.1, 0.6, 0.2],
        ];
        let avg = average_ranks(&scores);
        assert_eq!(
            avg,
            vec![
                (1.0 + 3.0 + 2.0) / 3.0,
                (2.0 + 1.0 + 1.0) / 3.0,
                (3.0 + 2.0 + 3.0) / 3.0
            ]
        );
    }
}
