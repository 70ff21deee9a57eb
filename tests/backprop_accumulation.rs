//! The vendored candle-core's backward pass (vendor/README.md): a tensor's first gradient is
//! stored as it is instead of being added to a tensor of zeros. These tests pin down that the
//! gradients are unchanged by it: every first edge (add, sub, mul, a narrow view out of `cat`,
//! a transposed view out of `matmul`), accumulation over several consumers, and that a
//! variable's gradient is contiguous and does not hold a larger buffer alive.
use candle_core::{CpuStorage, Device, Storage, Tensor, Var};

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32 tensor")
}

/// Elements in the buffer behind `t`.
fn buffer_len(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => v.len(),
        _ => usize::MAX,
    }
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * w.abs().max(1.0),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn several_consumers_accumulate_into_one_gradient() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let x0 = [0.5f32, -1.0, 2.0, 0.25, -0.75, 1.5];
    let x = Var::from_slice(&x0, (2, 3), &dev)?;
    let c = Tensor::new(&[[1f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &dev)?;
    // sum(x·x + x − exp(x)) + sum(cat([x, 2x], 0)) + sum(c − x)
    let a = ((x.mul(&x)? + x.as_tensor())? - x.exp()?)?.sum_all()?;
    let b = Tensor::cat(&[x.as_tensor(), &(x.as_tensor() * 2.0)?], 0)?.sum_all()?;
    let d = (&c - x.as_tensor())?.sum_all()?;
    let grads = ((a + b)? + d)?.backward()?;
    let g = grads.get(&x).expect("gradient of x");
    let want: Vec<f32> = x0
        .iter()
        .map(|v| 2.0 * v + 1.0 - v.exp() + 3.0 - 1.0)
        .collect();
    assert_close(&values(g), &want, "dx");
    assert!(g.is_contiguous());
    Ok(())
}

#[test]
fn a_first_edge_through_sub_is_negated() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let v = Var::from_slice(&[1f32, -2.0, 3.0], 3, &dev)?;
    let c = Tensor::new(&[2f32, 2.0, 2.0], &dev)?;
    let w = Tensor::new(&[1f32, 10.0, 100.0], &dev)?;
    let grads = (&c - v.as_tensor())?.mul(&w)?.sum_all()?.backward()?;
    assert_close(
        &values(grads.get(&v).expect("gradient of v")),
        &[-1.0, -10.0, -100.0],
        "dv",
    );
    Ok(())
}

#[test]
fn view_gradients_of_variables_are_compact_and_contiguous() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let p = Var::from_slice(&[1f32, 2.0, 3.0, 4.0], (2, 2), &dev)?;
    let q = Var::from_slice(&[5f32, 6.0, 7.0, 8.0, 9.0, 10.0], (3, 2), &dev)?;
    let w = Tensor::new(
        &[[1f32, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0], [9.0, 10.0]],
        &dev,
    )?;
    // cat along dim 0: q's gradient is a narrow of the output gradient, past its start.
    let grads = Tensor::cat(&[p.as_tensor(), q.as_tensor()], 0)?
        .mul(&w)?
        .sum_all()?
        .backward()?;
    let (gp, gq) = (grads.get(&p).expect("dp"), grads.get(&q).expect("dq"));
    assert_close(&values(gp), &[1.0, 2.0, 3.0, 4.0], "dp");
    assert_close(&values(gq), &[5.0, 6.0, 7.0, 8.0, 9.0, 10.0], "dq");
    assert_eq!(buffer_len(gq), 6, "dq holds the whole output gradient");
    // matmul against a transposed weight: the weight's gradient arrives as a transposed view.
    let m = Var::from_slice(&[1f32, 0.0, -1.0, 2.0, 0.5, 1.0], (3, 2), &dev)?;
    let xs = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev)?;
    let grads = xs.matmul(&m.as_tensor().t()?)?.sum_all()?.backward()?;
    let gm = grads.get(&m).expect("dm");
    assert!(gm.is_contiguous(), "dm is stored contiguous");
    // d/dm sum(xs · mᵀ) = 1ᵀ·xs for every row of m: [4, 6] per row.
    assert_close(&values(gm), &[4.0, 6.0, 4.0, 6.0, 4.0, 6.0], "dm");
    Ok(())
}
