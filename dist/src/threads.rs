//! Compute threads per rank. Ranks on one node share its cores, so each rank gets
//! cores / local world size threads (as torchrun sets OMP_NUM_THREADS), unless the user chose a
//! number. The count sizes rayon's global pool, which the CPU backend's elementwise kernels,
//! reductions and both GEMM paths split their work over.

use crate::error::{DistError, Result};

/// Where a thread count came from, for the startup line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadSource {
    /// `InitOptions::threads`.
    Options,
    /// An environment variable (`NABLA_NUM_THREADS`, `RAYON_NUM_THREADS`, `OMP_NUM_THREADS`).
    Env(&'static str),
    /// Cores divided by the ranks on this node.
    CoresPerLocalRank,
}

/// The thread count for one rank: `explicit` if given, else the first of `NABLA_NUM_THREADS`,
/// `RAYON_NUM_THREADS`, `OMP_NUM_THREADS` that is set, else `cores / local_world_size` (at least 1).
pub fn threads_for_rank(
    explicit: Option<usize>,
    local_world_size: usize,
    cores: usize,
    get: &dyn Fn(&str) -> Option<String>,
) -> Result<(usize, ThreadSource)> {
    if let Some(n) = explicit {
        if n == 0 {
            return Err(DistError::Usage("InitOptions::threads must be at least 1".into()));
        }
        return Ok((n, ThreadSource::Options));
    }
    for var in ["NABLA_NUM_THREADS", "RAYON_NUM_THREADS", "OMP_NUM_THREADS"] {
        if let Some(v) = get(var) {
            return match v.trim().parse::<usize>() {
                Ok(n) if n > 0 => Ok((n, ThreadSource::Env(var))),
                _ => Err(DistError::Environment(format!(
                    "{var}={v:?} is not a positive integer; fix or unset it"
                ))),
            };
        }
    }
    Ok((
        (cores / local_world_size.max(1)).max(1),
        ThreadSource::CoresPerLocalRank,
    ))
}

/// Sizes rayon's global pool to `n` threads. When the pool already exists (something ran a
/// parallel kernel before `init`), it cannot be resized: a warning says so.
pub fn configure(n: usize) {
    if rayon::ThreadPoolBuilder::new().num_threads(n).build_global().is_err() && rayon::current_num_threads() != n {
        eprintln!(
            "nabla-dist: the compute thread pool was already started with {} threads before nb::dist::init(); \
             call init first to get {n}",
            rayon::current_num_threads()
        );
    }
}

/// The compute threads this process uses now (the size of rayon's global pool).
pub fn current() -> usize {
    rayon::current_num_threads()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_shared_by_the_local_ranks_unless_the_user_chooses() {
        let none = |_: &str| None;
        assert_eq!(
            threads_for_rank(None, 4, 16, &none).unwrap(),
            (4, ThreadSource::CoresPerLocalRank)
        );
        assert_eq!(threads_for_rank(None, 3, 2, &none).unwrap().0, 1);
        assert_eq!(
            threads_for_rank(Some(6), 4, 16, &none).unwrap(),
            (6, ThreadSource::Options)
        );
        let omp = |k: &str| (k == "OMP_NUM_THREADS").then(|| "3".to_string());
        assert_eq!(
            threads_for_rank(None, 4, 16, &omp).unwrap(),
            (3, ThreadSource::Env("OMP_NUM_THREADS"))
        );
        let bad = |k: &str| (k == "NABLA_NUM_THREADS").then(|| "zero".to_string());
        let e = threads_for_rank(None, 1, 2, &bad).unwrap_err().to_string();
        assert!(e.contains("NABLA_NUM_THREADS=\"zero\""), "{e}");
    }
}
