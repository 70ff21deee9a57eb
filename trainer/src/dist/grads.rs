//! Summing gradients over ranks in a few large buckets: one collective call per bucket
//! instead of one per tensor (as PyTorch's DistributedDataParallel buckets them).

use anyhow::{bail, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use super::Collective;

/// Floats per bucket (16 MiB; DDP's default is 25 MB).
pub const BUCKET_FLOATS: usize = 4 << 20;

/// Replace the gradient of each of `vars` in `grads` by its sum over the ranks. A variable
/// without a gradient on this rank (a head with no sample in this rank's share) adds zeros
/// and gets the sum. Every rank must pass the same variables in the same order.
pub fn all_reduce_gradients(
    collective: &dyn Collective,
    vars: &[Var],
    grads: &mut GradStore,
    bucket_floats: usize,
) -> Result<()> {
    let mut start = 0;
    while start < vars.len() {
        let mut end = start;
        let mut floats = 0;
        while end < vars.len() && (end == start || floats + vars[end].elem_count() <= bucket_floats)
        {
            floats += vars[end].elem_count();
            end += 1;
        }
        reduce_bucket(collective, &vars[start..end], grads)?;
        start = end;
    }
    Ok(())
}

fn reduce_bucket(collective: &dyn Collective, vars: &[Var], grads: &mut GradStore) -> Result<()> {
    let flat = vars
        .iter()
        .map(|v| {
            if v.dtype() != DType::F32 {
                bail!(
                    "data-parallel training needs f32 parameters, got {:?}",
                    v.dtype()
                );
            }
            Ok(match grads.get(v.as_tensor()) {
                Some(g) => g.flatten_all()?,
                None => Tensor::zeros(v.elem_count(), DType::F32, v.device())?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let summed = collective.all_reduce_sum(&Tensor::cat(&flat, 0)?)?;
    let mut at = 0;
    for v in vars {
        let n = v.elem_count();
        let g = summed.narrow(0, at, n)?.reshape(v.shape())?.contiguous()?;
        grads.insert(v.as_tensor(), g);
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::Device;
    use mtpath_shared::testdata::ThreadSum;

    use super::*;

    /// Rank `.1` of the threads `.0`.
    struct Rank(Arc<ThreadSum>, usize, usize);

    impl Collective for Rank {
        fn rank(&self) -> usize {
            self.1
        }
        fn world(&self) -> usize {
            self.2
        }
        fn engine(&self) -> &'static str {
            "threads"
        }
        fn all_reduce_sum(&self, buffer: &Tensor) -> Result<Tensor> {
            let mut v: Vec<f64> = buffer.to_dtype(DType::F64)?.to_vec1()?;
            self.0.sum(&mut v);
            Ok(Tensor::new(v, buffer.device())?.to_dtype(DType::F32)?)
        }
        fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
            self.0.sum(values);
            Ok(())
        }
        fn broadcast_bytes(&self, _bytes: &mut Vec<u8>) -> Result<()> {
            unimplemented!("not used here")
        }
        fn barrier(&self) -> Result<()> {
            self.0.barrier();
            Ok(())
        }
        fn abort(&self, code: i32) -> ! {
            std::process::exit(code)
        }
    }

    #[test]
    fn gradients_are_summed_in_buckets_with_missing_ones_as_zeros() {
        let dev = Device::Cpu;
        let shapes: [&[usize]; 4] = [&[3, 4], &[5], &[2, 2, 2], &[7]];
        let vars: Vec<Var> = shapes
            .iter()
            .map(|s| Var::zeros(*s, DType::F32, &dev).unwrap())
            .collect();
        let ranks = Arc::new(ThreadSum::new(2));
        let grad = |rank: usize, i: usize| {
            let n: usize = shapes[i].iter().product();
            let v: Vec<f32> = (0..n).map(|k| (rank * 100 + i * 10 + k) as f32).collect();
            Tensor::from_vec(v, shapes[i], &dev).unwrap()
        };
        let results: Vec<GradStore> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..2)
                .map(|rank| {
                    let (vars, ranks) = (&vars, ranks.clone());
                    s.spawn(move || {
                        // A store with an entry for every variable (GradStore has no
                        // public constructor), then this rank's gradients.
                        let total = vars
                            .iter()
                            .map(|v| v.as_tensor().sum_all().unwrap())
                            .reduce(|a, b| (a + b).unwrap())
                            .unwrap();
                        let mut grads = total.backward().unwrap();
                        for (i, v) in vars.iter().enumerate() {
                            // Rank 1 has no gradient for variable 2.
                            if rank == 1 && i == 2 {
                                grads.remove(v.as_tensor());
                            } else {
                                grads.insert(v.as_tensor(), grad(rank, i));
                            }
                        }
                        // Buckets of at most 13 floats: [12], [5, 8], [7].
                        all_reduce_gradients(&Rank(ranks, rank, 2), vars, &mut grads, 13).unwrap();
                        grads
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(ranks.calls(), 3);
        for grads in &results {
            for (i, v) in vars.iter().enumerate() {
                let want = if i == 2 {
                    grad(0, i)
                } else {
                    (grad(0, i) + grad(1, i)).unwrap()
                };
                let got = grads.get(v.as_tensor()).unwrap();
                assert_eq!(got.dims(), want.dims());
                assert_eq!(
                    got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                );
            }
        }
    }
}
