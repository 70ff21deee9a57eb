//! Data-parallel training over several processes on engines the field already uses: MPI on
//! CPUs (`--features mpi`, launched by `mpirun`/`srun`) and NCCL on NVIDIA GPUs (`--features
//! nccl`, launched by `torchrun` or Slurm, one process per GPU).
//!
//! Every rank builds its share of each global batch (the sampler is a pure function of the
//! seed and the iteration), runs forward and backward on it, and the gradients are summed
//! over the ranks in a few large buckets ([`grads`]); every rank then takes the same
//! optimiser step. Rank 0 alone validates and writes the run directory.

pub mod grads;
pub mod launch;
#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "nccl")]
mod nccl;
pub mod rendezvous;

use std::sync::Arc;

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};

pub use launch::{Backend, Engine, Launch};

/// The collective operations data-parallel training needs, over all ranks of one run. Every
/// rank calls the same operations in the same order with buffers of the same length.
pub trait Collective: Send + Sync {
    /// This process's rank, `0..world`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world(&self) -> usize;
    /// The engine's name, for messages ("MPI", "NCCL").
    fn engine(&self) -> &'static str;
    /// The element-wise sum over ranks of a flat f32 tensor, on the tensor's device.
    fn all_reduce_sum(&self, buffer: &Tensor) -> Result<Tensor>;
    /// Replace `values` (host memory) by their element-wise sum over ranks.
    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// Rank 0's `bytes` on every rank (other ranks' contents are replaced).
    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()>;
    /// Wait until every rank gets here.
    fn barrier(&self) -> Result<()>;
    /// Stop every rank of the run now (exit status `code`): the way out of an error that
    /// the other ranks cannot know about, which would otherwise leave them waiting.
    fn abort(&self, code: i32) -> !;
}

/// A data-parallel run's settings.
#[derive(Clone)]
pub struct Distributed {
    /// The ranks' collective operations.
    pub collective: Arc<dyn Collective>,
    /// Synchronised BatchNorm: statistics of the whole global batch instead of each rank's
    /// share (results then equal a single process's).
    pub sync_bn: bool,
}

impl Distributed {
    /// This process's rank.
    pub fn rank(&self) -> usize {
        self.collective.rank()
    }

    /// The number of ranks.
    pub fn world(&self) -> usize {
        self.collective.world()
    }
}

/// Adapts a [`Collective`] to synchronised BatchNorm's interface.
pub struct StatsSync(pub Arc<dyn Collective>);

impl mtpath_shared::layers::BatchStatsSync for StatsSync {
    fn sum(&self, values: &mut [f64]) -> std::result::Result<(), String> {
        self.0
            .all_reduce_sum_f64(values)
            .map_err(|e| format!("{e:#}"))
    }
}

/// Join the run this process was launched into, if any: the engine is chosen by `backend`
/// (auto: MPI under an MPI launcher, NCCL under torchrun or Slurm with a CUDA device).
/// `device` may be rewritten (`cuda` becomes `cuda:LOCAL_RANK` under NCCL). `None`: a single
/// process.
pub fn join(backend: Backend, device: &mut Device) -> Result<Option<Arc<dyn Collective>>> {
    let launch = Launch::from_env(&|k| std::env::var(k).ok())?;
    let engine = launch::choose(backend, launch.as_ref(), device.is_cuda())?;
    match engine {
        None => Ok(None),
        // One MPI rank in a build without MPI: nothing to share, so train alone.
        Some(Engine::Mpi)
            if !cfg!(feature = "mpi") && launch.as_ref().is_some_and(|l| l.world == 1) =>
        {
            Ok(None)
        }
        Some(Engine::Mpi) => join_mpi(),
        Some(Engine::Nccl) => {
            let Some(launch) = launch else {
                bail!("--dist nccl: no rank in the environment (set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, or launch with torchrun or srun)")
            };
            join_nccl(&launch, device)
        }
    }
}

#[cfg(feature = "mpi")]
fn join_mpi() -> Result<Option<Arc<dyn Collective>>> {
    Ok(Some(Arc::new(mpi::Mpi::init()?)))
}

#[cfg(not(feature = "mpi"))]
fn join_mpi() -> Result<Option<Arc<dyn Collective>>> {
    bail!(
        "this process was launched by MPI with several ranks, but this mtpath was built \
         without MPI; rebuild it with `cargo build --release -p mtpath --features mpi` \
         (needs OpenMPI: apt-get install libopenmpi-dev openmpi-bin libclang-dev)"
    )
}

#[cfg(feature = "nccl")]
fn join_nccl(launch: &Launch, device: &mut Device) -> Result<Option<Arc<dyn Collective>>> {
    Ok(Some(Arc::new(nccl::Nccl::init(launch, device)?)))
}

#[cfg(not(feature = "nccl"))]
fn join_nccl(_launch: &Launch, _device: &mut Device) -> Result<Option<Arc<dyn Collective>>> {
    bail!(
        "this process was launched with several ranks on a CUDA device, but this mtpath was \
         built without NCCL; rebuild it with `--features nccl` (see scripts/build-cuda.sh)"
    )
}

/// Split `batch` slots over `world` ranks: rank `rank`'s slots `start..end` (sizes differ by
/// at most one; the first ranks take the larger shares).
pub fn share(batch: usize, world: usize, rank: usize) -> std::ops::Range<usize> {
    let (q, r) = (batch / world, batch % world);
    let start = rank * q + rank.min(r);
    start..start + q + usize::from(rank < r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_batch_once_in_order() {
        for batch in 1..20 {
            for world in 1..=batch.min(6) {
                let mut next = 0;
                for rank in 0..world {
                    let s = share(batch, world, rank);
                    assert_eq!(s.start, next);
                    assert!(!s.is_empty() && s.len() <= batch.div_ceil(world));
                    next = s.end;
                }
                assert_eq!(next, batch);
            }
        }
        assert_eq!(share(10, 3, 0), 0..4);
        assert_eq!(share(10, 3, 2), 7..10);
    }
}
