//! Every convolution shape of ResNet-50 and DenseNet-121 at batch 2: forward, input gradient
//! and weight gradient of candle's convolution on the test device (`MTPATH_TEST_DEVICE=cuda`
//! on a GPU build: the path CUDA training takes; the CPU otherwise: candle's CPU kernels)
//! against mtpath's CPU convolution, which the torchvision fixtures pin down.

#[path = "parity_common.rs"]
mod parity_common;

use candle_core::{Device, Tensor, Var};
use mtpath_shared::layers::conv::{conv2d, ConvGeom};
use parity_common::{rel_l2, test_device};

/// (in, out, kernel, stride, padding).
type Shape = (usize, usize, usize, usize, usize);

fn resnet50_shapes() -> Vec<Shape> {
    let mut v = vec![(3, 64, 7, 2, 3)];
    for (c_in, mid, out, blocks, stride) in [
        (64, 64, 256, 3, 1),
        (256, 128, 512, 4, 2),
        (512, 256, 1024, 6, 2),
        (1024, 512, 2048, 3, 2),
    ] {
        for b in 0..blocks {
            let cin = if b == 0 { c_in } else { out };
            let s = if b == 0 { stride } else { 1 };
            v.push((cin, mid, 1, 1, 0));
            v.push((mid, mid, 3, s, 1));
            v.push((mid, out, 1, 1, 0));
            if b == 0 {
                v.push((c_in, out, 1, stride, 0));
            }
        }
    }
    v
}

fn densenet121_shapes() -> Vec<Shape> {
    let mut v = vec![(3, 64, 7, 2, 3)];
    let mut c = 64;
    for (i, layers) in [6, 12, 24, 16].into_iter().enumerate() {
        for l in 0..layers {
            v.push((c + l * 32, 128, 1, 1, 0));
            v.push((128, 32, 3, 1, 1));
        }
        c += layers * 32;
        if i < 3 {
            v.push((c, c / 2, 1, 1, 0));
            c /= 2;
        }
    }
    v
}

#[test]
fn every_conv_shape_of_the_resnet_and_densenet_backbones_matches_at_batch_2() {
    let dev = test_device();
    let mut shapes = resnet50_shapes();
    shapes.extend(densenet121_shapes());
    shapes.sort();
    shapes.dedup();
    let mut worst = (0.0f64, String::new());
    for &(cin, cout, k, stride, padding) in &shapes {
        // Odd sides, so strided windows do not tile the input exactly.
        let side = if k == 7 { 21 } else { 9 };
        let x = Tensor::randn(0f32, 1.0, (2, cin, side, side), &Device::Cpu).unwrap();
        let w = (Tensor::randn(0f32, 1.0, (cout, cin, k, k), &Device::Cpu).unwrap()
            / ((cin * k * k) as f64).sqrt())
        .unwrap();
        let geom = ConvGeom { stride, padding };
        let (xr, wr) = (Var::from_tensor(&x).unwrap(), Var::from_tensor(&w).unwrap());
        let yr = conv2d(xr.as_tensor(), wr.as_tensor(), geom).unwrap();
        let r = Tensor::randn(0f32, 1.0, yr.shape(), &Device::Cpu).unwrap();
        let gr = yr.mul(&r).unwrap().sum_all().unwrap().backward().unwrap();

        let xd = Var::from_tensor(&x.to_device(&dev).unwrap()).unwrap();
        let wd = Var::from_tensor(&w.to_device(&dev).unwrap()).unwrap();
        let yd = xd
            .as_tensor()
            .conv2d(wd.as_tensor(), padding, stride, 1, 1)
            .unwrap();
        let gd = yd
            .mul(&r.to_device(&dev).unwrap())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let what = format!("{cin}->{cout} k{k} s{stride} p{padding}");
        for (name, a, b) in [
            ("output", &yd, &yr),
            (
                "input gradient",
                gd.get(xd.as_tensor()).unwrap(),
                gr.get(xr.as_tensor()).unwrap(),
            ),
            (
                "weight gradient",
                gd.get(wd.as_tensor()).unwrap(),
                gr.get(wr.as_tensor()).unwrap(),
            ),
        ] {
            let e = rel_l2(a, b);
            assert!(e < 1e-4, "{what}: {name} rel error {e:.2e}");
            if e > worst.0 {
                worst = (e, format!("{what} {name}"));
            }
        }
    }
    eprintln!(
        "{} conv shapes on {:?}: worst rel error {:.2e} ({})",
        shapes.len(),
        dev.location(),
        worst.0,
        worst.1
    );
}
