//! A communicator whose ranks are threads of one process, over shared memory. It lets the
//! multi-rank logic above the transport (bucketing, uneven shards, `no_sync`, leaf checks) be
//! tested by `cargo test` on any machine, with no MPI. Sums are taken in rank order, so every
//! rank gets bit-identical results, as from MPI.

use std::sync::{Arc, Barrier, Mutex};

use crate::comm::{CommResult, Communicator, HostBuf, HostBufMut};

/// What ranks deposit for one collective.
#[derive(Clone)]
enum Deposit {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    U8(Vec<u8>),
}

impl Deposit {
    fn of(buf: HostBuf<'_>) -> Deposit {
        match buf {
            HostBuf::F32(s) => Deposit::F32(s.to_vec()),
            HostBuf::F64(s) => Deposit::F64(s.to_vec()),
            HostBuf::I64(s) => Deposit::I64(s.to_vec()),
            HostBuf::U8(s) => Deposit::U8(s.to_vec()),
        }
    }
}

struct Shared {
    size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Option<Deposit>>>,
    dup: Mutex<Option<Arc<Shared>>>,
}

impl Shared {
    fn new(size: usize) -> Arc<Shared> {
        Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![None; size]),
            dup: Mutex::new(None),
        })
    }
}

/// One rank of a group of threads (see the module doc). Build the group with
/// [`ThreadComm::world`] and move one communicator to each thread.
pub struct ThreadComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl ThreadComm {
    /// Communicators for `size` ranks, rank `i` at index `i`.
    pub fn world(size: usize) -> Vec<ThreadComm> {
        assert!(size > 0, "ThreadComm::world: at least one rank");
        let shared = Shared::new(size);
        (0..size)
            .map(|rank| ThreadComm {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    /// Deposits `mine`, waits for every rank, returns every deposit (rank order), and waits
    /// again so that no rank overwrites a slot another is still reading.
    fn exchange(&self, mine: Deposit) -> Vec<Deposit> {
        self.shared.slots.lock().unwrap_or_else(|e| e.into_inner())[self.rank] = Some(mine);
        self.shared.barrier.wait();
        let all: Vec<Deposit> = self
            .shared
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|d| d.clone().expect("every rank deposited"))
            .collect();
        self.shared.barrier.wait();
        all
    }
}

macro_rules! sum_into {
    ($dst:expr_2021, $all:expr_2021, $variant:ident) => {{
        for x in $dst.iter_mut() {
            *x = Default::default();
        }
        for d in &$all {
            let Deposit::$variant(v) = d else {
                return Err("ranks passed buffers of different types".into());
            };
            if v.len() != $dst.len() {
                return Err(format!(
                    "ranks passed buffers of {} and {} elements",
                    v.len(),
                    $dst.len()
                ));
            }
            for (x, y) in $dst.iter_mut().zip(v) {
                *x += *y;
            }
        }
    }};
}

impl Communicator for ThreadComm {
    fn name(&self) -> &'static str {
        "threads"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.shared.size
    }
    fn local_rank(&self) -> usize {
        self.rank
    }
    fn local_world_size(&self) -> usize {
        self.shared.size
    }
    fn all_reduce_sum(&self, buf: HostBufMut<'_>) -> CommResult<()> {
        let all = self.exchange(Deposit::of(buf.as_ref()));
        match buf {
            HostBufMut::F32(d) => sum_into!(d, all, F32),
            HostBufMut::F64(d) => sum_into!(d, all, F64),
            HostBufMut::I64(d) => sum_into!(d, all, I64),
            HostBufMut::U8(_) => return Err("sums of bytes are not supported; use i64".into()),
        }
        Ok(())
    }
    fn broadcast(&self, mut buf: HostBufMut<'_>, root: usize) -> CommResult<()> {
        let all = self.exchange(Deposit::of(buf.as_ref()));
        let src = match &all[root] {
            Deposit::F32(v) => HostBuf::F32(v),
            Deposit::F64(v) => HostBuf::F64(v),
            Deposit::I64(v) => HostBuf::I64(v),
            Deposit::U8(v) => HostBuf::U8(v),
        };
        buf.copy_from(src)
    }
    fn barrier(&self) -> CommResult<()> {
        self.exchange(Deposit::U8(Vec::new()));
        Ok(())
    }
    fn all_gather_bytes(&self, mine: &[u8]) -> CommResult<Vec<Vec<u8>>> {
        Ok(self
            .exchange(Deposit::U8(mine.to_vec()))
            .into_iter()
            .map(|d| match d {
                Deposit::U8(v) => v,
                _ => unreachable!("all ranks gather bytes"),
            })
            .collect())
    }
    fn duplicate(&self) -> CommResult<Box<dyn Communicator>> {
        if self.rank == 0 {
            *self.shared.dup.lock().unwrap_or_else(|e| e.into_inner()) = Some(Shared::new(self.shared.size));
        }
        self.shared.barrier.wait();
        let shared = self
            .shared
            .dup
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .expect("rank 0 made the duplicate");
        self.shared.barrier.wait();
        Ok(Box::new(ThreadComm {
            rank: self.rank,
            shared,
        }))
    }
    fn abort(&self, code: i32) -> ! {
        eprintln!("nabla-dist: thread rank {} aborts the process (code {code})", self.rank);
        std::process::abort()
    }
}
