//! Finding the process group from the environment that started this process: Open MPI's
//! `mpirun`, MPICH/Intel's Hydra, Slurm's `srun`, or a torchrun-style launcher
//! (`nabla-launch`). A pure function of the variables, so every case is unit-tested.

use crate::error::{DistError, Result};

/// Who started this process, judged from its environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launcher {
    /// Open MPI's `mpirun` (`OMPI_COMM_WORLD_*`).
    OpenMpi,
    /// MPICH or Intel MPI's Hydra (`PMI_RANK`, `PMI_SIZE`).
    Hydra,
    /// Slurm's `srun` (`SLURM_PROCID`, `SLURM_STEP_NUM_TASKS`).
    Slurm,
    /// A torchrun-style launcher such as `nabla-launch` (`RANK`, `WORLD_SIZE`).
    Launcher,
    /// Nothing: a single process.
    None,
}

impl Launcher {
    /// True for the launchers whose ranks talk through MPI.
    pub fn is_mpi(self) -> bool {
        matches!(self, Launcher::OpenMpi | Launcher::Hydra | Launcher::Slurm)
    }

    /// A name for messages.
    pub fn describe(self) -> &'static str {
        match self {
            Launcher::OpenMpi => "Open MPI's mpirun (OMPI_COMM_WORLD_*)",
            Launcher::Hydra => "MPICH/Intel MPI's Hydra (PMI_RANK, PMI_SIZE)",
            Launcher::Slurm => "Slurm's srun (SLURM_PROCID, SLURM_STEP_NUM_TASKS)",
            Launcher::Launcher => "a torchrun-style launcher (RANK, WORLD_SIZE)",
            Launcher::None => "no launcher (a single process)",
        }
    }
}

/// The process group the environment describes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessEnv {
    /// Who started the process.
    pub launcher: Launcher,
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Rank on this node, when the environment says.
    pub local_rank: Option<usize>,
    /// Ranks on this node, when the environment says.
    pub local_world_size: Option<usize>,
}

fn parse(name: &str, value: &str) -> Result<usize> {
    value.trim().parse::<usize>().map_err(|_| {
        DistError::Environment(format!(
            "{name}={value:?} is not a non-negative integer; fix or unset it"
        ))
    })
}

/// Reads a pair of variables that must be set together: both, or neither.
fn pair(get: &dyn Fn(&str) -> Option<String>, a: &str, b: &str) -> Result<Option<(usize, usize)>> {
    match (get(a), get(b)) {
        (None, None) => Ok(None),
        (Some(x), Some(y)) => Ok(Some((parse(a, &x)?, parse(b, &y)?))),
        (Some(x), None) => Err(DistError::Environment(format!(
            "{a}={x} is set but {b} is not: a launcher sets both; set both or neither"
        ))),
        (None, Some(y)) => Err(DistError::Environment(format!(
            "{b}={y} is set but {a} is not: a launcher sets both; set both or neither"
        ))),
    }
}

/// Slurm's `SLURM_STEP_TASKS_PER_NODE` (`2(x3),1`: two tasks on each of three nodes, then one)
/// for node `node`.
fn slurm_tasks_on_node(spec: &str, node: usize) -> Option<usize> {
    let mut seen = 0usize;
    for part in spec.split(',') {
        let (count, repeat) = match part.split_once("(x") {
            Some((c, r)) => (c.trim().parse().ok()?, r.trim_end_matches(')').parse().ok()?),
            None => (part.trim().parse().ok()?, 1usize),
        };
        if node < seen + repeat {
            return Some(count);
        }
        seen += repeat;
    }
    None
}

/// The process group described by the variables `get` returns (`std::env::var` in use).
///
/// Checked in this order: Open MPI, Hydra, a torchrun-style launcher, Slurm (the launcher
/// comes before Slurm because a launcher started by `srun` sets its own ranks' variables).
pub fn detect(get: &dyn Fn(&str) -> Option<String>) -> Result<ProcessEnv> {
    let make = |launcher, (rank, world): (usize, usize), local_rank, local_world| -> Result<ProcessEnv> {
        if world == 0 {
            return Err(DistError::Environment(format!(
                "{} says the world has 0 ranks",
                Launcher::describe(launcher)
            )));
        }
        if rank >= world {
            return Err(DistError::Environment(format!(
                "{} says rank {rank} in a world of {world} ranks",
                Launcher::describe(launcher)
            )));
        }
        if let (Some(l), Some(n)) = (local_rank, local_world)
            && l >= n
        {
            return Err(DistError::Environment(format!(
                "{} says local rank {l} of {n} local ranks",
                Launcher::describe(launcher)
            )));
        }
        Ok(ProcessEnv {
            launcher,
            rank,
            world_size: world,
            local_rank,
            local_world_size: local_world,
        })
    };
    let local = |a: &str, b: &str| -> Result<(Option<usize>, Option<usize>)> {
        Ok(match pair(get, a, b)? {
            Some((r, n)) => (Some(r), Some(n)),
            None => (None, None),
        })
    };
    if let Some(p) = pair(get, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE")? {
        let (lr, lw) = local("OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE")?;
        return make(Launcher::OpenMpi, p, lr, lw);
    }
    if let Some(p) = pair(get, "PMI_RANK", "PMI_SIZE")? {
        let (lr, lw) = local("MPI_LOCALRANKID", "MPI_LOCALNRANKS")?;
        return make(Launcher::Hydra, p, lr, lw);
    }
    if let Some(p) = pair(get, "RANK", "WORLD_SIZE")? {
        let (lr, lw) = match (get("LOCAL_RANK"), get("LOCAL_WORLD_SIZE")) {
            (Some(r), Some(n)) => (Some(parse("LOCAL_RANK", &r)?), Some(parse("LOCAL_WORLD_SIZE", &n)?)),
            (Some(r), None) => (Some(parse("LOCAL_RANK", &r)?), None),
            (None, Some(n)) => {
                return Err(DistError::Environment(format!(
                    "LOCAL_WORLD_SIZE={n} is set but LOCAL_RANK is not: set both or neither"
                )));
            }
            (None, None) => (None, None),
        };
        return make(Launcher::Launcher, p, lr, lw);
    }
    // Slurm's step variables are set by srun for each task; an sbatch script itself (one
    // process, with SLURM_PROCID=0 and SLURM_NTASKS) has no step task count, so it is not
    // mistaken for one rank of many.
    if get("SLURM_STEP_NUM_TASKS").is_some() {
        let p = pair(get, "SLURM_PROCID", "SLURM_STEP_NUM_TASKS")?.expect("SLURM_STEP_NUM_TASKS is set");
        let local_rank = get("SLURM_LOCALID").map(|v| parse("SLURM_LOCALID", &v)).transpose()?;
        let node = get("SLURM_NODEID")
            .map(|v| parse("SLURM_NODEID", &v))
            .transpose()?
            .unwrap_or(0);
        let local_world = get("SLURM_STEP_TASKS_PER_NODE").and_then(|s| slurm_tasks_on_node(&s, node));
        return make(Launcher::Slurm, p, local_rank, local_world);
    }
    Ok(ProcessEnv {
        launcher: Launcher::None,
        rank: 0,
        world_size: 1,
        local_rank: Some(0),
        local_world_size: Some(1),
    })
}

/// [`detect`] over this process's environment.
pub fn detect_from_process() -> Result<ProcessEnv> {
    detect(&|name| std::env::var(name).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> Result<ProcessEnv> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        detect(&move |k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_is_one_process() {
        let e = env(&[]).unwrap();
        assert_eq!((e.launcher, e.rank, e.world_size), (Launcher::None, 0, 1));
    }

    #[test]
    fn open_mpi_variables() {
        let e = env(&[
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_NUM_TASKS", "1"),
        ])
        .unwrap();
        assert_eq!(e.launcher, Launcher::OpenMpi);
        assert_eq!(
            (e.rank, e.world_size, e.local_rank, e.local_world_size),
            (3, 4, Some(1), Some(2))
        );
    }

    #[test]
    fn hydra_and_launcher_and_slurm() {
        let e = env(&[
            ("PMI_RANK", "1"),
            ("PMI_SIZE", "2"),
            ("MPI_LOCALRANKID", "1"),
            ("MPI_LOCALNRANKS", "2"),
        ])
        .unwrap();
        assert_eq!(
            (e.launcher, e.rank, e.world_size, e.local_rank),
            (Launcher::Hydra, 1, 2, Some(1))
        );
        let e = env(&[
            ("RANK", "2"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "2"),
            ("LOCAL_WORLD_SIZE", "4"),
        ])
        .unwrap();
        assert_eq!(
            (e.launcher, e.rank, e.world_size, e.local_world_size),
            (Launcher::Launcher, 2, 8, Some(4))
        );
        let e = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_STEP_NUM_TASKS", "7"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NODEID", "2"),
            ("SLURM_STEP_TASKS_PER_NODE", "2(x2),3"),
        ])
        .unwrap();
        assert_eq!(
            (e.launcher, e.rank, e.world_size, e.local_rank, e.local_world_size),
            (Launcher::Slurm, 5, 7, Some(0), Some(3))
        );
    }

    #[test]
    fn an_sbatch_script_is_one_process() {
        let e = env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "4"), ("SLURM_JOB_ID", "17")]).unwrap();
        assert_eq!((e.launcher, e.world_size), (Launcher::None, 1));
        let e = env(&[("SLURM_STEP_NUM_TASKS", "4")]).unwrap_err().to_string();
        assert!(e.contains("SLURM_PROCID is not"), "{e}");
    }

    #[test]
    fn half_a_pair_and_bad_values_are_errors_that_say_what_to_do() {
        let e = env(&[("RANK", "1")]).unwrap_err().to_string();
        assert!(e.contains("RANK=1 is set but WORLD_SIZE is not"), "{e}");
        let e = env(&[("OMPI_COMM_WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("OMPI_COMM_WORLD_RANK is not"), "{e}");
        let e = env(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("RANK=\"x\" is not a non-negative integer"), "{e}");
        let e = env(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err().to_string();
        assert!(e.contains("rank 2 in a world of 2"), "{e}");
        let e = env(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("LOCAL_RANK is not"), "{e}");
    }

    #[test]
    fn slurm_task_lists() {
        assert_eq!(slurm_tasks_on_node("4", 0), Some(4));
        assert_eq!(slurm_tasks_on_node("2(x3),1", 2), Some(2));
        assert_eq!(slurm_tasks_on_node("2(x3),1", 3), Some(1));
        assert_eq!(slurm_tasks_on_node("2(x3),1", 4), None);
    }
}
