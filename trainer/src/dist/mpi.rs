//! The MPI engine (rsmpi over the system's MPI, e.g. Debian's OpenMPI).

use std::thread::ThreadId;

use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Threading;

use super::Collective;

/// MPI's world communicator. MPI is initialised at the "funneled" level: only the thread
/// that initialised it may call it, which every method checks.
pub struct Mpi {
    universe: Option<Universe>,
    thread: ThreadId,
    rank: usize,
    world: usize,
}

impl Mpi {
    /// Initialise MPI (once per process).
    pub fn init() -> Result<Self> {
        let (universe, _provided) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| anyhow!("MPI is already initialised in this process"))?;
        let world = universe.world();
        Ok(Self {
            rank: world.rank() as usize,
            world: world.size() as usize,
            universe: Some(universe),
            thread: std::thread::current().id(),
        })
    }

    /// The world communicator, after checking that this is MPI's thread.
    fn comm(&self) -> Result<SimpleCommunicator> {
        if std::thread::current().id() != self.thread {
            bail!("internal: MPI called from a thread other than the one that initialised it");
        }
        Ok(SimpleCommunicator::world())
    }
}

/// MPI counts are C ints.
fn count(n: usize) -> Result<()> {
    if n > i32::MAX as usize {
        bail!(
            "MPI: a buffer of {n} elements is over MPI's limit of {}",
            i32::MAX
        );
    }
    Ok(())
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn engine(&self) -> &'static str {
        "MPI"
    }

    fn all_reduce_sum(&self, buffer: &Tensor) -> Result<Tensor> {
        let send: Vec<f32> = buffer.to_vec1()?;
        count(send.len())?;
        let mut recv = vec![0f32; send.len()];
        self.comm()?
            .all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        Ok(Tensor::from_vec(recv, send.len(), buffer.device())?)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        count(values.len())?;
        let send = values.to_vec();
        self.comm()?
            .all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let comm = self.comm()?;
        let root = comm.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        bytes.resize(len as usize, 0);
        // In chunks: MPI counts are C ints, and a model can be larger than 2 GiB.
        for chunk in bytes.chunks_mut(1 << 30) {
            root.broadcast_into(chunk);
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.comm()?.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }
}

impl Drop for Mpi {
    /// A panic on one rank must not leave the others waiting in a collective (MPI_Finalize
    /// would wait for them): abort the whole run instead.
    fn drop(&mut self) {
        if std::thread::panicking() && self.world > 1 {
            SimpleCommunicator::world().abort(101);
        }
        drop(self.universe.take());
    }
}
