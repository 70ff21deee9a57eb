//! Times one convolution's forward, input-gradient and weight-gradient passes (the CPU
//! kernels themselves, no autograd bookkeeping) for a shape:
//! `cargo run --release -p mtpath-shared --example conv_bench -- N CIN COUT H K STRIDE PAD`.
//! scripts/conv_torch.py times PyTorch's passes for the same shape.
use candle_core::{Device, Tensor};
use mtpath_shared::layers::conv::{conv2d, conv2d_input_grad, conv2d_weight_grad, ConvGeom};
use std::time::Instant;

fn time(reps: usize, mut f: impl FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    f()?;
    let t = Instant::now();
    for _ in 0..reps {
        f()?;
    }
    Ok(t.elapsed().as_secs_f64() / reps as f64)
}

fn main() -> candle_core::Result<()> {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|s| s.parse().expect("shape arguments are numbers"))
        .collect();
    let [n, cin, cout, h, k, stride, pad] = a[..] else {
        panic!("usage: conv_bench N CIN COUT H K STRIDE PAD");
    };
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (n, cin, h, h), &dev)?;
    let w = Tensor::randn(0f32, 0.1, (cout, cin, k, k), &dev)?;
    let geom = ConvGeom {
        stride,
        padding: pad,
    };
    let y = conv2d(&x, &w, geom)?;
    let dy = Tensor::randn(0f32, 1.0, y.dims(), &dev)?;
    let gflop = 2.0 * (y.elem_count() * cin * k * k) as f64 / 1e9;
    let reps = 5;
    let fwd = time(reps, || conv2d(&x, &w, geom).map(drop))?;
    let dx = time(reps, || {
        conv2d_input_grad(&dy, &w, x.dims(), geom).map(drop)
    })?;
    let dw = time(reps, || {
        conv2d_weight_grad(&x, &dy, w.dims(), geom).map(drop)
    })?;
    println!(
        "mtpath fwd {:.1} ms ({:.0} GFLOP/s)  dx {:.1} ms ({:.0})  dw {:.1} ms ({:.0})",
        fwd * 1e3,
        gflop / fwd,
        dx * 1e3,
        gflop / dx,
        dw * 1e3,
        gflop / dw
    );
    Ok(())
}
