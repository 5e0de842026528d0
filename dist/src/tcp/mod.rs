//! The TCP ring communicator: what ranks started by `nabla-launch` talk through on machines
//! without MPI (the role Gloo plays for PyTorch).
//!
//! Ranks find each other through the launcher's rendezvous store (`MASTER_ADDR:MASTER_PORT`,
//! proving the job token from `NABLA_RDZV_TOKEN`), then each keeps one authenticated TCP
//! connection to the next rank and one from the previous. All-reduce is a ring reduce-scatter
//! followed by an all-gather, chunked and pipelined (see [`plans`]), moved by a single-threaded
//! `poll` loop ([`engine`]). Every rank ends each all-reduce with bit-identical buffers.
//!
//! A peer that dies mid-collective closes its sockets, and its neighbours' calls fail at once
//! with an error naming it; a peer that stalls fails the call after the timeout (and the
//! process group's watchdog ends the job).

mod connect;
mod engine;
mod plans;
mod shm;

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nabla_launch::store::{BlockingStoreClient, ClientOptions, Token};

use crate::comm::{CommResult, Communicator, HostBufMut};
use crate::error::{DistError, Result};
use connect::{RingSpec, build_ring};
use engine::{Elem, Header, Link, Plan};

/// Bytes per pipelined segment: large enough that each system call moves a lot, small enough
/// that the ring's stages overlap.
const SEGMENT_BYTES: usize = 512 * 1024;

/// The error of every call after a failed one.
const BROKEN: &str = "this TCP communicator failed in an earlier call and its connections are out of step; the job \
                      cannot go on (restart it, from a checkpoint)";

/// Where and how a rank joins a TCP ring: what `nabla-launch` puts in each rank's environment.
#[derive(Clone)]
pub struct TcpOptions {
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Rank on this node.
    pub local_rank: usize,
    /// Ranks on this node.
    pub local_world_size: usize,
    /// The store's `host:port` (`MASTER_ADDR:MASTER_PORT`).
    pub store_addr: String,
    /// The job's secret (`NABLA_RDZV_TOKEN`).
    pub token: Token,
    /// Unique per launch round (`NABLA_RUN_ID`, the restart count), so that the ranks of a
    /// restarted group never meet those of the round before.
    pub run_id: String,
    /// The address to listen on (`NABLA_SOCKET_ADDR`); default: the local address this host
    /// uses to reach the store, which the other nodes can reach too.
    pub listen_ip: Option<IpAddr>,
    /// How long connecting and each stalled collective may take.
    pub timeout: Duration,
    /// Let ring neighbours on the same host exchange data through shared memory (`/dev/shm`)
    /// instead of loopback TCP (default true; `NABLA_TCP_SHM=0` turns it off).
    pub shared_memory: bool,
}

impl std::fmt::Debug for TcpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TcpOptions(rank {} of {}, store {}, run {:?}, token hidden)",
            self.rank, self.world_size, self.store_addr, self.run_id
        )
    }
}

impl TcpOptions {
    /// Reads the variables `nabla-launch` sets (`get` is `std::env::var` in use). `rank`,
    /// `world_size` and the local pair come from the environment already parsed by the caller.
    pub fn from_vars(
        get: &dyn Fn(&str) -> Option<String>,
        rank: usize,
        world_size: usize,
        local: (usize, usize),
        timeout: Duration,
    ) -> Result<TcpOptions> {
        let need = |name: &str| {
            get(name).ok_or_else(|| {
                DistError::Environment(format!(
                    "RANK={rank} and WORLD_SIZE={world_size} are set but {name} is not. Ranks that are not started by \
                     mpirun talk through nabla's TCP communicator, which needs the variables nabla-launch sets \
                     (MASTER_ADDR, MASTER_PORT, NABLA_RDZV_TOKEN): start the job with `nabla-launch --nproc-per-node \
                     {world_size} -- PROGRAM`, or with mpirun and a binary built with `--features mpi`"
                ))
            })
        };
        let (host, port) = (need("MASTER_ADDR")?, need("MASTER_PORT")?);
        let token = Token::from_text(&need("NABLA_RDZV_TOKEN")?)
            .map_err(|e| DistError::Environment(format!("NABLA_RDZV_TOKEN: {e}")))?;
        let listen_ip = match get("NABLA_SOCKET_ADDR") {
            None => None,
            Some(v) => Some(v.trim().parse::<IpAddr>().map_err(|_| {
                DistError::Environment(format!(
                    "NABLA_SOCKET_ADDR={v:?} is not an IP address; give one of this host's addresses that the other \
                     nodes can reach, or unset it"
                ))
            })?),
        };
        Ok(TcpOptions {
            rank,
            world_size,
            local_rank: local.0,
            local_world_size: local.1,
            store_addr: format!("{}:{}", host.trim(), port.trim()),
            token,
            run_id: get("NABLA_RUN_ID").unwrap_or_else(|| "0".into()),
            listen_ip,
            timeout,
            shared_memory: get("NABLA_TCP_SHM").is_none_or(|v| v.trim() != "0"),
        })
    }
}

/// The mutable side of a ring: its sockets, the call counter and the receive staging buffers.
struct RingState {
    link: Option<Link>,
    calls: u64,
    staging_f32: Vec<f32>,
    staging_f64: Vec<f64>,
    staging_i64: Vec<i64>,
    staging_u8: Vec<u8>,
}

/// A communicator over a ring of TCP connections between the ranks of a `nabla-launch` job.
pub struct TcpCommunicator {
    rank: usize,
    world: usize,
    local_rank: usize,
    local_world: usize,
    store: Arc<Mutex<BlockingStoreClient>>,
    spec: RingSpec,
    duplicates: AtomicUsize,
    state: Mutex<RingState>,
}

impl std::fmt::Debug for TcpCommunicator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TcpCommunicator(rank {} of {}, ring {:?})",
            self.rank, self.world, self.spec.ring_id
        )
    }
}

impl TcpCommunicator {
    /// Connects to the store and builds the ring (collective: every rank calls it).
    pub fn connect(options: TcpOptions) -> Result<TcpCommunicator> {
        let fail = |what: String| {
            DistError::Environment(format!(
                "rank {} of {}: TCP communicator: {what}",
                options.rank, options.world_size
            ))
        };
        if options.rank >= options.world_size {
            return Err(fail(format!(
                "rank {} is outside a world of {}",
                options.rank, options.world_size
            )));
        }
        let client_options = ClientOptions {
            connect_timeout: options.timeout,
            ..ClientOptions::default()
        };
        let store = BlockingStoreClient::connect(&options.store_addr, &options.token, client_options).map_err(|e| {
            fail(format!(
                "cannot reach the launcher's store at {}: {e}",
                options.store_addr
            ))
        })?;
        let listen_ip = match options.listen_ip {
            Some(ip) => ip,
            None => store.inner().local_addr().ip(),
        };
        let spec = RingSpec {
            rank: options.rank,
            world: options.world_size,
            ring_id: format!("{}/world", options.run_id),
            token: options.token.clone(),
            listen_ip,
            timeout: options.timeout,
            shared_memory: options.shared_memory,
        };
        TcpCommunicator::join(
            Arc::new(Mutex::new(store)),
            spec,
            (options.local_rank, options.local_world_size),
        )
        .map_err(fail)
    }

    fn join(store: Arc<Mutex<BlockingStoreClient>>, spec: RingSpec, local: (usize, usize)) -> CommResult<Self> {
        let link = if spec.world > 1 {
            Some(build_ring(&store, &spec)?)
        } else {
            None
        };
        Ok(TcpCommunicator {
            rank: spec.rank,
            world: spec.world,
            local_rank: local.0,
            local_world: local.1,
            store,
            spec,
            duplicates: AtomicUsize::new(0),
            state: Mutex::new(RingState {
                link,
                calls: 0,
                staging_f32: Vec::new(),
                staging_f64: Vec::new(),
                staging_i64: Vec::new(),
                staging_u8: Vec::new(),
            }),
        })
    }

    /// Runs one plan on the ring under the state lock; `make` builds the plan for this rank.
    fn run<T: Elem>(
        &self,
        op: &'static str,
        buf: &mut [T],
        staging: fn(&mut RingState) -> &mut Vec<T>,
        plan: impl FnOnce(usize, usize, usize) -> Plan,
    ) -> CommResult<()> {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut *guard;
        state.calls += 1;
        let header = Header {
            op,
            seq: state.calls,
            count: buf.len() as u64,
            elem: T::NAME,
        };
        let Some(mut link) = state.link.take() else {
            if self.world > 1 {
                return Err(BROKEN.into());
            }
            return Ok(());
        };
        let seg = (SEGMENT_BYTES / size_of::<T>()).max(1);
        let plan = plan(self.rank, self.world, seg);
        let result = engine::run(&mut link, buf, &plan, header, staging(state));
        // A failed call leaves the byte streams out of step: the ring cannot be used again.
        if result.is_ok() {
            state.link = Some(link);
        }
        result
    }

    fn all_reduce<T: Elem>(&self, buf: &mut [T], staging: fn(&mut RingState) -> &mut Vec<T>) -> CommResult<()> {
        let len = buf.len();
        self.run("all_reduce_sum", buf, staging, |r, n, seg| {
            plans::all_reduce(len, r, n, seg)
        })
    }

    fn broadcast_typed<T: Elem>(
        &self,
        buf: &mut [T],
        root: usize,
        staging: fn(&mut RingState) -> &mut Vec<T>,
    ) -> CommResult<()> {
        let len = buf.len();
        self.run("broadcast", buf, staging, |r, n, seg| {
            plans::broadcast(len, root, r, n, seg)
        })
    }

    /// The transport of each direction of this rank's ring links, `(to next, from previous)`:
    /// `"shm"` for a neighbour on this host reached through shared memory, else `"tcp"`
    /// (`("none", "none")` in a world of one, or after a failed call).
    pub fn transports(&self) -> (&'static str, &'static str) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.link.as_ref().map_or(("none", "none"), Link::transports)
    }
}

impl Communicator for TcpCommunicator {
    fn name(&self) -> &'static str {
        "tcp"
    }
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn local_rank(&self) -> usize {
        self.local_rank
    }
    fn local_world_size(&self) -> usize {
        self.local_world
    }

    fn all_reduce_sum(&self, buf: HostBufMut<'_>) -> CommResult<()> {
        match buf {
            HostBufMut::F32(b) => self.all_reduce(b, |s| &mut s.staging_f32),
            HostBufMut::F64(b) => self.all_reduce(b, |s| &mut s.staging_f64),
            HostBufMut::I64(b) => self.all_reduce(b, |s| &mut s.staging_i64),
            HostBufMut::U8(_) => Err("sums of bytes are not supported; use i64".into()),
        }
    }

    fn broadcast(&self, buf: HostBufMut<'_>, root: usize) -> CommResult<()> {
        if root >= self.world {
            return Err(format!("root {root} is outside a group of {} ranks", self.world));
        }
        match buf {
            HostBufMut::F32(b) => self.broadcast_typed(b, root, |s| &mut s.staging_f32),
            HostBufMut::F64(b) => self.broadcast_typed(b, root, |s| &mut s.staging_f64),
            HostBufMut::I64(b) => self.broadcast_typed(b, root, |s| &mut s.staging_i64),
            HostBufMut::U8(b) => self.broadcast_typed(b, root, |s| &mut s.staging_u8),
        }
    }

    fn barrier(&self) -> CommResult<()> {
        // Every rank's 1 must reach every rank: no rank leaves before all have arrived.
        let mut ones = vec![1i64; self.world];
        let len = ones.len();
        self.run(
            "barrier",
            &mut ones,
            |s| &mut s.staging_i64,
            |r, n, seg| plans::all_reduce(len, r, n, seg),
        )?;
        if ones.iter().any(|&x| x != self.world as i64) {
            return Err(format!(
                "barrier counted {ones:?} arrivals instead of {} each",
                self.world
            ));
        }
        Ok(())
    }

    fn all_gather_bytes(&self, mine: &[u8]) -> CommResult<Vec<Vec<u8>>> {
        let mut sizes = vec![0i64; self.world];
        sizes[self.rank] = mine.len() as i64;
        self.all_reduce_sum(HostBufMut::I64(&mut sizes))?;
        let mut bounds = Vec::with_capacity(self.world);
        let mut at = 0usize;
        for &s in &sizes {
            let s = usize::try_from(s).map_err(|_| format!("a rank announced {s} bytes to gather"))?;
            bounds.push(at..at + s);
            at += s;
        }
        let mut all = vec![0u8; at];
        all[bounds[self.rank].clone()].copy_from_slice(mine);
        let chunks = bounds.clone();
        self.run(
            "all_gather_bytes",
            &mut all,
            |s| &mut s.staging_u8,
            move |r, _, seg| plans::all_gather(&chunks, r, seg),
        )?;
        Ok(bounds.into_iter().map(|b| all[b].to_vec()).collect())
    }

    fn duplicate(&self) -> CommResult<Box<dyn Communicator>> {
        let k = self.duplicates.fetch_add(1, Ordering::SeqCst) + 1;
        let spec = RingSpec {
            ring_id: format!("{}.dup{k}", self.spec.ring_id),
            ..self.spec.clone()
        };
        let dup = TcpCommunicator::join(self.store.clone(), spec, (self.local_rank, self.local_world))?;
        Ok(Box::new(dup))
    }

    fn abort(&self, code: i32) -> ! {
        // Exiting closes this rank's sockets: its neighbours' calls fail at once, and
        // nabla-launch stops every rank when one exits non-zero.
        eprintln!(
            "nabla-dist: rank {} of {} is ending the job (exit status {code})",
            self.rank, self.world
        );
        std::process::exit(code)
    }
}
