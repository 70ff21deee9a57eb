//! Fit-time benchmark of the linear probes: 10,000 × 2,048 synthetic features, 10 Gaussian
//! clusters (fixed seed), logistic regression and linear SVM.
//!
//! ```text
//! cargo run --release -p mtpath-shared --example probe_bench -- [--c 1.0] [--tol 1e-8] [--dump /tmp/probe_bench]
//! python3 scripts/bench_probe.py /tmp/probe_bench      # the same fits with scikit-learn
//! ```
//! `--dump PREFIX` writes the data as `PREFIX.x.f32` (n × d little-endian f32) and
//! `PREFIX.y.u32` so that the Python script fits exactly the same problem. `--tol` is the
//! logistic regression's relative gradient-norm tolerance (default 1e-8); both sides print
//! their objective, so speed can be weighed against how close each gets to the optimum.

use std::time::Instant;

use mtpath_shared::probe::{LinearSvc, LogisticRegression};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};

const N: usize = 10_000;
const D: usize = 2_048;
const K: usize = 10;
/// Per-dimension spread of the class centres (noise has unit variance): centres lie about
/// 64 × 0.03 ≈ 1.9 noise σ apart, so the classes overlap and the probe has work to do.
const CENTRE_STD: f64 = 0.03;

fn data() -> (Vec<f32>, Vec<u32>) {
    let mut rng = StdRng::seed_from_u64(2024);
    let unit = Normal::new(0.0, 1.0).unwrap();
    let centres: Vec<f64> = (0..K * D)
        .map(|_| CENTRE_STD * unit.sample(&mut rng))
        .collect();
    let y: Vec<u32> = (0..N).map(|i| (i % K) as u32).collect();
    let x = (0..N * D)
        .map(|i| (centres[y[i / D] as usize * D + i % D] + unit.sample(&mut rng)) as f32)
        .collect();
    (x, y)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let c: f64 = arg("--c").map(|s| s.parse()).transpose()?.unwrap_or(1.0);
    let tol: f64 = arg("--tol").map(|s| s.parse()).transpose()?.unwrap_or(1e-8);
    let (x, y) = data();
    if let Some(prefix) = arg("--dump") {
        let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let yb: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(format!("{prefix}.x.f32"), xb)?;
        std::fs::write(format!("{prefix}.y.u32"), yb)?;
        println!("wrote {prefix}.x.f32 and {prefix}.y.u32 ({N} × {D}, {K} classes)");
    }

    let t = Instant::now();
    let lr = LogisticRegression {
        tol,
        ..LogisticRegression::new(c)
    };
    let (m, rep) = lr.fit_report(&x, N, D, &y, K)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "LogisticRegression C={c} tol={tol:e}: {secs:.2} s, {} L-BFGS iterations, converged {}, objective {:.8}, train accuracy {:.4}",
        rep.n_iter,
        rep.converged,
        rep.objective,
        m.accuracy(&x, N, &y)?
    );

    let t = Instant::now();
    let (m, rep) = LinearSvc::new(c).fit_report(&x, N, D, &y, K)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "LinearSvc C={c}: {secs:.2} s, max {} epochs, converged {}, primal objective (sum over classes) {:.8}, train accuracy {:.4}",
        rep.n_iter,
        rep.converged,
        rep.objective,
        m.accuracy(&x, N, &y)?
    );
    Ok(())
}
