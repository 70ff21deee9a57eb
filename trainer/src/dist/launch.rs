//! Where a process sits in a multi-process launch, read from the variables the launchers
//! set (OpenMPI's mpirun, MPICH/PMI, torchrun, Slurm), and which engine serves it.

use anyhow::{bail, Context, Result};

/// `--dist`: the data-parallel engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// MPI under an MPI launcher (mpirun, or srun with PMI); NCCL under torchrun or Slurm on
    /// a CUDA device; otherwise a single process.
    Auto,
    /// One process, whatever the environment says.
    Off,
    /// MPI (CPU).
    Mpi,
    /// NCCL (NVIDIA GPUs).
    Nccl,
}

/// A data-parallel engine, as chosen by [`choose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// MPI (CPU).
    Mpi,
    /// NCCL (NVIDIA GPUs).
    Nccl,
}

/// The launcher that set the rank variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// OpenMPI's mpirun (`OMPI_COMM_WORLD_*`).
    OpenMpi,
    /// A PMI launcher (MPICH/Hydra, srun --mpi=pmi2/pmix: `PMI_*`, `PMIX_RANK`).
    Pmi,
    /// torchrun or hand-set variables (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`).
    Torchrun,
    /// Slurm (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`).
    Slurm,
}

impl Launcher {
    fn is_mpi(self) -> bool {
        matches!(self, Launcher::OpenMpi | Launcher::Pmi)
    }
}

/// This process's place in a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Who launched it.
    pub launcher: Launcher,
    /// Global rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
    /// Rank on this node (selects the GPU).
    pub local_rank: usize,
    /// Rank 0's rendezvous address (`MASTER_ADDR:MASTER_PORT`), when set.
    pub master: Option<(String, u16)>,
}

fn number(get: &dyn Fn(&str) -> Option<String>, key: &str) -> Result<Option<usize>> {
    match get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("environment variable {key}={v:?} is not a number")),
    }
}

impl Launch {
    /// Read the launch from environment variables (`get`); `None` when no launcher's
    /// variables are set.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let sets: [(Launcher, &str, &str, &str); 4] = [
            (
                Launcher::OpenMpi,
                "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_SIZE",
                "OMPI_COMM_WORLD_LOCAL_RANK",
            ),
            (Launcher::Pmi, "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"),
            (Launcher::Torchrun, "RANK", "WORLD_SIZE", "LOCAL_RANK"),
            (
                Launcher::Slurm,
                "SLURM_PROCID",
                "SLURM_NTASKS",
                "SLURM_LOCALID",
            ),
        ];
        for (launcher, rank_key, world_key, local_key) in sets {
            let (Some(rank), Some(world)) = (number(get, rank_key)?, number(get, world_key)?)
            else {
                continue;
            };
            if world == 0 || rank >= world {
                bail!("environment: {rank_key}={rank} with {world_key}={world}: the rank must be below the world size");
            }
            let local_rank = number(get, local_key)?.unwrap_or(0);
            let master = match (get("MASTER_ADDR"), get("MASTER_PORT")) {
                (Some(addr), Some(port)) => Some((
                    addr,
                    port.trim().parse().with_context(|| {
                        format!("environment variable MASTER_PORT={port:?} is not a port number")
                    })?,
                )),
                _ => None,
            };
            return Ok(Some(Launch {
                launcher,
                rank,
                world,
                local_rank,
                master,
            }));
        }
        // PMIx (srun --mpi=pmix, OpenMPI 5) names the rank but not always the size.
        if get("PMIX_RANK").is_some() {
            return Ok(Some(Launch {
                launcher: Launcher::Pmi,
                rank: number(get, "PMIX_RANK")?.unwrap_or(0),
                world: 0,
                local_rank: 0,
                master: None,
            }));
        }
        Ok(None)
    }
}

/// The engine for `backend` in `launch` (`None`: one process). An MPI launcher means MPI
/// even with one rank, so that `mpirun -n 1` goes through the same code.
pub fn choose(backend: Backend, launch: Option<&Launch>, cuda: bool) -> Result<Option<Engine>> {
    let several = launch.is_some_and(|l| l.world != 1);
    match backend {
        Backend::Off => Ok(None),
        Backend::Mpi => Ok(Some(Engine::Mpi)),
        Backend::Nccl => {
            if !cuda {
                bail!("--dist nccl needs a CUDA device (--device cuda)");
            }
            Ok(Some(Engine::Nccl))
        }
        Backend::Auto => match launch {
            None => Ok(None),
            Some(l) if l.launcher.is_mpi() => Ok(Some(Engine::Mpi)),
            Some(_) if !several => Ok(None),
            Some(_) if cuda => Ok(Some(Engine::Nccl)),
            Some(l) => bail!(
                "launched as rank {} of {} ({:?} variables) on the CPU: CPU ranks train over MPI; \
                 launch with `mpirun -n N mtpath train ...` (a `--features mpi` build), or pass \
                 --device cuda for NCCL, or --dist off for one process",
                l.rank,
                l.world,
                l.launcher
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn launches_are_read_from_each_launchers_variables() {
        let l = Launch::from_env(&env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            l,
            Launch {
                launcher: Launcher::Torchrun,
                rank: 3,
                world: 8,
                local_rank: 1,
                master: Some(("node1".into(), 29500)),
            }
        );
        let l = Launch::from_env(&env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.launcher, l.rank, l.world, l.local_rank),
            (Launcher::Slurm, 5, 16, 1)
        );
        // mpirun's variables win over Slurm's (mpirun inside an allocation).
        let l = Launch::from_env(&env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((l.launcher, l.rank, l.world), (Launcher::OpenMpi, 1, 2));
        assert_eq!(Launch::from_env(&env(&[])).unwrap(), None);
    }

    #[test]
    fn bad_variables_are_named() {
        let e = Launch::from_env(&env(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(format!("{e:#}").contains("RANK=\"x\""), "{e:#}");
        let e = Launch::from_env(&env(&[("RANK", "2"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(format!("{e:#}").contains("below the world size"), "{e:#}");
        let e = Launch::from_env(&env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "h"),
            ("MASTER_PORT", "http"),
        ]))
        .unwrap_err();
        assert!(format!("{e:#}").contains("MASTER_PORT"), "{e:#}");
    }

    #[test]
    fn the_engine_follows_the_launcher_and_the_device() {
        let torchrun = |world| Launch {
            launcher: Launcher::Torchrun,
            rank: 0,
            world,
            local_rank: 0,
            master: None,
        };
        let mpi = Launch {
            launcher: Launcher::OpenMpi,
            ..torchrun(1)
        };
        assert_eq!(choose(Backend::Auto, None, false).unwrap(), None);
        assert_eq!(
            choose(Backend::Auto, Some(&mpi), false).unwrap(),
            Some(Engine::Mpi)
        );
        assert_eq!(
            choose(Backend::Auto, Some(&torchrun(1)), true).unwrap(),
            None
        );
        assert_eq!(
            choose(Backend::Auto, Some(&torchrun(4)), true).unwrap(),
            Some(Engine::Nccl)
        );
        let e = choose(Backend::Auto, Some(&torchrun(4)), false).unwrap_err();
        assert!(format!("{e}").contains("mpirun"), "{e}");
        assert!(choose(Backend::Nccl, None, false).is_err());
        assert_eq!(choose(Backend::Off, Some(&mpi), false).unwrap(), None);
    }
}
