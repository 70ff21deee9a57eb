//! The NCCL engine (cudarc's NCCL bindings on candle's CUDA stream), one process per GPU.
//! Rank 0 creates NCCL's unique id and hands it to the other ranks over the TCP rendezvous
//! ([`super::rendezvous`]), whose connections then stop every rank when one dies.

use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, CustomOp1, Device, Layout, Shape, Tensor};
use cudarc::driver::CudaStream;
use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use super::rendezvous::{self, Control};
use super::{Collective, Launch};

/// A communicator that may move between threads.
struct SendComm(Comm);

// SAFETY: an NCCL communicator may be used from any host thread provided calls on it are
// not concurrent; every use goes through the `Mutex` in `Nccl`, which serialises them.
unsafe impl Send for SendComm {}

/// NCCL over all ranks of a torchrun/Slurm launch.
pub struct Nccl {
    comm: Arc<Mutex<SendComm>>,
    stream: Arc<CudaStream>,
    device: Device,
    rank: usize,
    world: usize,
    control: Mutex<Control>,
}

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow!("NCCL {what}: {e:?}")
}

impl Nccl {
    /// Join the launch: this rank's GPU is `cuda:LOCAL_RANK` (`device` is set to it).
    pub fn init(launch: &Launch, device: &mut Device) -> Result<Self> {
        let Some((host, port)) = &launch.master else {
            bail!(
                "rank {} of {}: set MASTER_ADDR (rank 0's host) and MASTER_PORT (a free port) \
                 for the rendezvous (torchrun sets them; under Slurm, e.g. \
                 MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -1))",
                launch.rank,
                launch.world
            );
        };
        *device = Device::new_cuda(launch.local_rank).with_context(|| {
            format!(
                "rank {}: GPU {} (LOCAL_RANK)",
                launch.rank, launch.local_rank
            )
        })?;
        let Device::Cuda(cuda) = &*device else {
            bail!("internal: not a CUDA device");
        };
        let stream = cuda.cuda_stream();
        let id = if launch.rank == 0 {
            Id::new().map_err(|e| nccl_error("unique id", e))?
        } else {
            Id::uninit([0; 128])
        };
        let payload: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
        let (payload, control) = rendezvous::rendezvous(
            (host.as_str(), *port),
            launch.rank,
            launch.world,
            &payload,
            rendezvous::timeout_from_env()?,
            rendezvous::exit_on_lost(),
        )?;
        let internal: [std::ffi::c_char; 128] = payload
            .iter()
            .map(|&b| b as std::ffi::c_char)
            .collect::<Vec<_>>()
            .try_into()
            .map_err(|_| anyhow!("rank {}: rank 0 sent a malformed NCCL id", launch.rank))?;
        let comm = Comm::from_rank(
            stream.clone(),
            launch.rank,
            launch.world,
            Id::uninit(internal),
        )
        .map_err(|e| nccl_error("communicator", e))?;
        Ok(Self {
            comm: Arc::new(Mutex::new(SendComm(comm))),
            stream,
            device: device.clone(),
            rank: launch.rank,
            world: launch.world,
            control: Mutex::new(control),
        })
    }

    fn comm(&self) -> Result<std::sync::MutexGuard<'_, SendComm>> {
        self.comm
            .lock()
            .map_err(|_| anyhow!("NCCL communicator poisoned by an earlier panic"))
    }
}

/// In-place sum over ranks of a contiguous f32 CUDA tensor, as a candle op.
struct AllReduce {
    comm: Arc<Mutex<SendComm>>,
}

impl CustomOp1 for AllReduce {
    fn name(&self) -> &'static str {
        "mtpath-nccl-all-reduce"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("NCCL all-reduce: the tensor is on the CPU, not a GPU")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("NCCL all-reduce: the tensor must be contiguous");
        };
        let device = s.device().clone();
        let src = s.as_cuda_slice::<f32>()?.slice(start..end);
        let mut dst = device
            .cuda_stream()
            .alloc_zeros::<f32>(end - start)
            .map_err(candle_core::Error::wrap)?;
        let comm = self
            .comm
            .lock()
            .map_err(|_| candle_core::Error::Msg("NCCL communicator poisoned".into()))?;
        comm.0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, device), l.shape().clone()))
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn engine(&self) -> &'static str {
        "NCCL"
    }

    fn all_reduce_sum(&self, buffer: &Tensor) -> Result<Tensor> {
        let on_gpu = buffer.to_device(&self.device)?.contiguous()?;
        let summed = on_gpu.apply_op1_no_bwd(&AllReduce {
            comm: self.comm.clone(),
        })?;
        Ok(summed.to_device(buffer.device())?)
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        let mut buf = self
            .stream
            .clone_htod(&*values)
            .map_err(|e| nccl_error("copy to the GPU", e))?;
        self.comm()?
            .0
            .all_reduce_in_place(&mut buf, &ReduceOp::Sum)
            .map_err(|e| nccl_error("all-reduce", e))?;
        let out = self
            .stream
            .clone_dtoh(&buf)
            .map_err(|e| nccl_error("copy from the GPU", e))?;
        values.copy_from_slice(&out);
        Ok(())
    }

    fn broadcast_bytes(&self, bytes: &mut Vec<u8>) -> Result<()> {
        let mut len = [bytes.len() as f64];
        if self.rank != 0 {
            len[0] = 0.0;
        }
        // The length travels as a sum in which only rank 0's term is not zero.
        self.all_reduce_sum_f64(&mut len)?;
        bytes.resize(len[0] as usize, 0);
        if bytes.is_empty() {
            return Ok(());
        }
        let mut buf = self
            .stream
            .clone_htod(bytes.as_slice())
            .map_err(|e| nccl_error("copy to the GPU", e))?;
        self.comm()?
            .0
            .broadcast_in_place(&mut buf, 0)
            .map_err(|e| nccl_error("broadcast", e))?;
        let out = self
            .stream
            .clone_dtoh(&buf)
            .map_err(|e| nccl_error("copy from the GPU", e))?;
        bytes.copy_from_slice(&out);
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        let mut one = [1.0];
        self.all_reduce_sum_f64(&mut one)
    }

    fn abort(&self, code: i32) -> ! {
        if let Ok(mut control) = self.control.lock() {
            control.abort(code);
        }
        std::process::exit(code)
    }
}
