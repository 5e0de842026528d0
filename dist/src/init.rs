//! `nb::dist::init()`: the process group this process belongs to, from its environment, with
//! the compute threads sized for the node and a panic hook that takes the job down.

use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use crate::env::{Launcher, ProcessEnv, detect_from_process};
use crate::error::{DistError, Result};
use crate::group::{DEFAULT_TIMEOUT, ProcessGroup};
use crate::tcp::{TcpCommunicator, TcpOptions};
use crate::threads;

/// Options of [`init_with`].
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Compute threads for this rank (default: `NABLA_NUM_THREADS`, `RAYON_NUM_THREADS` or
    /// `OMP_NUM_THREADS`, else cores / ranks on this node).
    pub threads: Option<usize>,
    /// How long a collective may take before the job is ended (default:
    /// `NABLA_DIST_TIMEOUT` seconds, else 300 s).
    pub timeout: Option<Duration>,
    /// On a panic in a job of several ranks, print the rank and end every rank (MPI_Abort), so
    /// that no other rank waits forever in its next collective. Default true.
    pub abort_on_panic: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            threads: None,
            timeout: None,
            abort_on_panic: true,
        }
    }
}

fn world_slot() -> &'static Mutex<Option<ProcessGroup>> {
    static WORLD: OnceLock<Mutex<Option<ProcessGroup>>> = OnceLock::new();
    WORLD.get_or_init(|| Mutex::new(None))
}

/// The process group of this process, found from the environment (see [`init_with`]).
pub fn init() -> Result<ProcessGroup> {
    init_with(InitOptions::default())
}

fn timeout_from_env() -> Result<Option<Duration>> {
    match std::env::var("NABLA_DIST_TIMEOUT") {
        Err(_) => Ok(None),
        Ok(v) => match v
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
        {
            Some(d) if !d.is_zero() => Ok(Some(d)),
            _ => Err(DistError::Environment(format!(
                "NABLA_DIST_TIMEOUT={v:?} is not a positive number of seconds (at most about 1.8e19)"
            ))),
        },
    }
}

/// The process group of this process:
/// - under Open MPI's `mpirun`, MPICH's Hydra or Slurm's `srun`, an MPI group (the binary needs
///   the `mpi` feature);
/// - with a torchrun-style launcher's `RANK`/`WORLD_SIZE` (`nabla-launch`), a
///   [`crate::TcpCommunicator`] ring built through the launcher's store (`MASTER_ADDR`,
///   `MASTER_PORT`, `NABLA_RDZV_TOKEN`), unless the world has one rank;
/// - otherwise a single process.
///
/// The first call also sizes the compute threads and installs the panic hook; later calls
/// return the same group. Mismatches (the environment says 4 ranks but MPI reports 1, half of
/// a variable pair set) are [`DistError::Environment`] errors that say what to do.
pub fn init_with(options: InitOptions) -> Result<ProcessGroup> {
    let mut slot = world_slot().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(g) = slot.as_ref() {
        return Ok(g.clone());
    }
    let env = detect_from_process()?;
    let timeout = match options.timeout {
        Some(t) => t,
        None => timeout_from_env()?.unwrap_or(DEFAULT_TIMEOUT),
    };
    let group = connect(&env, timeout)?;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let (n, _source) = threads::threads_for_rank(options.threads, group.local_world_size(), cores, &|k| {
        std::env::var(k).ok()
    })?;
    threads::configure(n);
    if options.abort_on_panic && group.world_size() > 1 {
        install_panic_hook(group.clone());
    }
    *slot = Some(group.clone());
    Ok(group)
}

fn connect(env: &ProcessEnv, timeout: Duration) -> Result<ProcessGroup> {
    if env.world_size == 1 {
        return Ok(ProcessGroup::single().with_timeout(timeout));
    }
    if env.launcher == Launcher::Launcher {
        return connect_tcp(env, timeout);
    }
    connect_mpi(env, timeout)
}

/// Ranks started by a torchrun-style launcher (`nabla-launch`) meet through its store and talk
/// over a TCP ring, with or without MPI in the binary.
fn connect_tcp(env: &ProcessEnv, timeout: Duration) -> Result<ProcessGroup> {
    let local = match (env.local_rank, env.local_world_size) {
        (Some(r), Some(n)) => (r, n),
        // Without the pair, assume one node (nabla-launch always sets it).
        _ => (env.rank, env.world_size),
    };
    let options = TcpOptions::from_vars(&|k| std::env::var(k).ok(), env.rank, env.world_size, local, timeout)?;
    let comm = TcpCommunicator::connect(options)?;
    Ok(ProcessGroup::new(Box::new(comm), timeout, "world"))
}

#[cfg(feature = "mpi")]
fn connect_mpi(env: &ProcessEnv, timeout: Duration) -> Result<ProcessGroup> {
    use crate::comm::Communicator;
    use crate::mpi_comm::MpiCommunicator;
    let comm = MpiCommunicator::world().map_err(DistError::Environment)?;
    if comm.world_size() != env.world_size || comm.rank() != env.rank {
        return Err(DistError::Environment(format!(
            "{} says rank {} of {}, but MPI ({}) reports rank {} of {}: the MPI library this binary links does not \
             match the launcher (for example a binary built against MPICH started by Open MPI's mpirun). \
             Rebuild against the launcher's MPI, or start it with the matching mpirun.",
            env.launcher.describe(),
            env.rank,
            env.world_size,
            MpiCommunicator::library_version().lines().next().unwrap_or(""),
            comm.rank(),
            comm.world_size()
        )));
    }
    Ok(ProcessGroup::new(Box::new(comm), timeout, "world"))
}

#[cfg(not(feature = "mpi"))]
fn connect_mpi(env: &ProcessEnv, _timeout: Duration) -> Result<ProcessGroup> {
    Err(DistError::Environment(format!(
        "{} says this is rank {} of {}, but this binary was built without MPI, so it would train alone and \
         disagree with the other ranks. Rebuild with `--features mpi` (the facade crate `nabla` forwards it; \
         needs libopenmpi-dev and libclang-dev).",
        env.launcher.describe(),
        env.rank,
        env.world_size
    )))
}

/// On a panic: the default report, then a line naming the rank, then the whole job ends.
fn install_panic_hook(group: ProcessGroup) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        eprintln!(
            "nabla-dist: rank {} of {} panicked (see above); ending every rank of the job",
            group.rank(),
            group.world_size()
        );
        group.abort(2);
    }));
}
