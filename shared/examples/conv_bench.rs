//! Times one convolution's forward, input-gradient and weight-gradient passes for a shape:
//! `cargo run --release -p mtpath-shared --example conv_bench -- N CIN COUT H K STRIDE PAD`.
use candle_core::{Device, Tensor, Var};
use mtpath_shared::layers::conv_op::{conv2d, ConvGeom};
use std::time::Instant;

fn main() -> candle_core::Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("number"))
        .collect();
    let [n, cin, cout, h, k, stride, pad] = a[..] else {
        panic!("N CIN COUT H K STRIDE PAD");
    };
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (n, cin, h, h), &dev)?)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (cout, cin, k, k), &dev)?)?;
    let geom = ConvGeom {
        stride,
        padding: pad,
    };
    let y = conv2d(x.as_tensor(), w.as_tensor(), geom)?;
    let oh = y.dim(2)?;
    let gflop = 2.0 * (n * cout * oh * oh * cin * k * k) as f64 / 1e9;
    let r = Tensor::randn(0f32, 1.0, y.dims(), &dev)?;
    let reps = 5;
    let t = Instant::now();
    for _ in 0..reps {
        conv2d(x.as_tensor(), w.as_tensor(), geom)?;
    }
    let fwd = t.elapsed().as_secs_f64() / reps as f64;
    let t = Instant::now();
    for _ in 0..reps {
        let y = conv2d(x.as_tensor(), w.as_tensor(), geom)?;
        y.mul(&r)?.sum_all()?.backward()?;
    }
    let both = t.elapsed().as_secs_f64() / reps as f64;
    println!(
        "fwd {:.1} ms ({:.0} GFLOP/s)  fwd+bwd {:.1} ms (bwd {:.0} GFLOP/s)",
        fwd * 1e3,
        gflop / fwd,
        both * 1e3,
        2.0 * gflop / (both - fwd)
    );
    Ok(())
}
