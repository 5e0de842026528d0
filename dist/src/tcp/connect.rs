//! Building a ring: every rank listens on a fresh port, publishes its address in the launcher's
//! store, connects to the next rank and accepts the previous one. Both connections open with the
//! token handshake of [`nabla_launch::peer`]; a connection that fails it is logged with the
//! peer's address and dropped, and the rank goes on waiting for the right peer.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nabla_launch::peer::{self, HELLO_LEN};
use nabla_launch::store::{BlockingStoreClient, Token};

use std::io::{Read, Write};

use crate::tcp::engine::{In, Link, Out};
use crate::tcp::shm::{Mailbox, ShmIn, ShmOut, fnv1a, host_key};

/// What a rank needs to join a ring.
#[derive(Clone)]
pub(crate) struct RingSpec {
    pub rank: usize,
    pub world: usize,
    /// Unique per job round and communicator (`{run_id}/{name}`): store keys and hellos carry it,
    /// so a rank of an earlier round cannot join this one's ring.
    pub ring_id: String,
    pub token: Token,
    /// The address to listen on and publish.
    pub listen_ip: IpAddr,
    /// How long building the ring may take.
    pub timeout: Duration,
    /// Whether neighbours on the same host may use shared memory instead of TCP.
    pub shared_memory: bool,
}

fn addr_key(ring_id: &str, rank: usize) -> String {
    format!("nabla-dist/ring/{ring_id}/addr/{rank}")
}

/// Who a connecting rank is: world size, rank, a hash of the whole ring id, and the id's first
/// bytes (for messages).
fn hello(spec: &RingSpec) -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[0..4].copy_from_slice(&(spec.world as u32).to_le_bytes());
    h[4..8].copy_from_slice(&(spec.rank as u32).to_le_bytes());
    let id = spec.ring_id.as_bytes();
    let hash = fnv1a(id);
    h[8..16].copy_from_slice(&hash.to_le_bytes());
    let n = id.len().min(HELLO_LEN - 16);
    h[16..16 + n].copy_from_slice(&id[..n]);
    h
}

/// The byte an acceptor sends after the handshake: whether it takes the connector as its
/// previous rank (the handshake proves the token; this says the ring and rank are right).
const WELCOME: u8 = 1;
/// How long an accepted connection may take to prove the token: short, so that connections
/// that never speak cannot hold the accept loop until the real peer's deadline.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);

/// Listens, publishes, connects to the next rank and accepts the previous one.
pub(crate) fn build_ring(store: &Arc<Mutex<BlockingStoreClient>>, spec: &RingSpec) -> Result<Link, String> {
    let (rank, world) = (spec.rank, spec.world);
    let next_rank = (rank + 1) % world;
    let prev_rank = (rank + world - 1) % world;
    let deadline = Instant::now() + spec.timeout;
    let listener = TcpListener::bind((spec.listen_ip, 0)).map_err(|e| {
        format!(
            "cannot listen on {} for the ring ({e}); set NABLA_SOCKET_ADDR to an address of this host that the other \
             nodes can reach",
            spec.listen_ip
        )
    })?;
    let my_addr = listener
        .local_addr()
        .map_err(|e| format!("the ring listener has no address: {e}"))?;
    {
        let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
        s.set(&addr_key(&spec.ring_id, rank), my_addr.to_string().as_bytes())
            .map_err(|e| format!("cannot publish this rank's ring address in the store: {e}"))?;
    }
    let next_addr = {
        let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
        let raw = s
            .get_within(&addr_key(&spec.ring_id, next_rank), spec.timeout)
            .map_err(|e| format!("rank {next_rank} never published its ring address: {e}"))?;
        String::from_utf8_lossy(&raw)
            .parse::<SocketAddr>()
            .map_err(|e| format!("rank {next_rank} published a ring address that does not parse ({e})"))?
    };
    let give_up = AtomicBool::new(false);
    let (next, prev) = std::thread::scope(|scope| {
        let accepting = scope.spawn(|| accept_prev(&listener, spec, prev_rank, deadline, &give_up));
        let next = connect_next(next_addr, spec, next_rank, deadline);
        if next.is_err() {
            // The ring cannot form: do not wait for the previous rank until the deadline.
            give_up.store(true, Ordering::Relaxed);
        }
        let prev = accepting
            .join()
            .unwrap_or_else(|_| Err("the ring's accepting thread panicked".into()));
        Ok::<_, String>((next?, prev?))
    })?;
    // Made only now that both neighbours are connected, so that a rank killed while it waits
    // for them leaves no file behind.
    let mailbox = if spec.shared_memory {
        match Mailbox::create() {
            Ok(m) => Some(Arc::new(m)),
            Err(e) => {
                eprintln!(
                    "nabla-dist: rank {rank}: no shared memory for ring neighbours on this host ({e}); using TCP"
                );
                None
            }
        }
    } else {
        None
    };
    let (mut next, mut prev) = (next, prev);
    let (next_box, prev_box) = pair_mailboxes(&mut next, &mut prev, mailbox.as_ref())
        .map_err(|e| format!("the shared-memory exchange with ranks {next_rank} and {prev_rank} failed: {e}"))?;
    if let Some(m) = &mailbox {
        // Both neighbours have mapped it (or declined): the name is no longer needed.
        m.unlink();
    }
    for s in [&next, &prev] {
        s.set_nodelay(true)
            .and_then(|_| s.set_nonblocking(true))
            .map_err(|e| format!("cannot configure a ring socket: {e}"))?;
    }
    let uses_shm = next_box.is_some() || prev_box.is_some();
    let next = match next_box {
        Some(b) => Out::Shm {
            pipe: ShmOut { next: b },
            socket: next,
        },
        None => Out::Tcp(next),
    };
    let prev = match (prev_box, &mailbox) {
        (Some(b), Some(mine)) => In::Shm {
            pipe: ShmIn {
                mine: mine.clone(),
                prev: b,
            },
            socket: prev,
        },
        _ => In::Tcp(prev),
    };
    Ok(Link {
        next,
        prev,
        next_rank,
        prev_rank,
        mailbox: if uses_shm { mailbox } else { None },
        stall_timeout: spec.timeout,
    })
}

/// What a rank tells each neighbour: its host key and its mailbox's path (empty: none).
fn send_mailbox_info(s: &mut TcpStream, key: u64, mailbox: Option<&Arc<Mailbox>>) -> std::io::Result<()> {
    let path = mailbox.map(|m| m.path().display().to_string()).unwrap_or_default();
    let mut msg = key.to_le_bytes().to_vec();
    msg.push(path.len().min(255) as u8);
    msg.extend_from_slice(&path.as_bytes()[..path.len().min(255)]);
    s.write_all(&msg)
}

fn read_mailbox_info(s: &mut TcpStream) -> std::io::Result<(u64, String)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head)?;
    let mut path = vec![0u8; head[8] as usize];
    s.read_exact(&mut path)?;
    let key = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    Ok((key, String::from_utf8_lossy(&path).into_owned()))
}

/// Decides, with both neighbours, which directions use shared memory: a direction does when
/// both ends are on the same host and each mapped the other's mailbox. Every message is sent on
/// both sockets before any is read, so no rank waits on a neighbour that waits on it.
#[allow(clippy::type_complexity)]
fn pair_mailboxes(
    next: &mut TcpStream,
    prev: &mut TcpStream,
    mine: Option<&Arc<Mailbox>>,
) -> std::io::Result<(Option<Arc<Mailbox>>, Option<Arc<Mailbox>>)> {
    let key = host_key();
    send_mailbox_info(next, key, mine)?;
    send_mailbox_info(prev, key, mine)?;
    let theirs = [read_mailbox_info(next)?, read_mailbox_info(prev)?];
    let opened: Vec<Option<Arc<Mailbox>>> = theirs
        .iter()
        .map(|(k, path)| {
            (mine.is_some() && *k == key && !path.is_empty())
                .then(|| Mailbox::open(path).ok().map(Arc::new))
                .flatten()
        })
        .collect();
    next.write_all(&[opened[0].is_some() as u8])?;
    prev.write_all(&[opened[1].is_some() as u8])?;
    let mut acks = [[0u8]; 2];
    next.read_exact(&mut acks[0])?;
    prev.read_exact(&mut acks[1])?;
    let mut opened = opened.into_iter();
    let keep = |b: Option<Arc<Mailbox>>, ack: [u8; 1]| b.filter(|_| ack[0] == 1);
    let next_box = keep(opened.next().flatten(), acks[0]);
    let prev_box = keep(opened.next().flatten(), acks[1]);
    Ok((next_box, prev_box))
}

fn remaining(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1))
}

fn connect_next(addr: SocketAddr, spec: &RingSpec, next_rank: usize, deadline: Instant) -> Result<TcpStream, String> {
    let mut last_error = String::new();
    while Instant::now() < deadline {
        match TcpStream::connect_timeout(&addr, remaining(deadline).min(Duration::from_secs(5))) {
            Ok(mut s) => {
                let t = Some(remaining(deadline));
                s.set_read_timeout(t)
                    .and_then(|_| s.set_write_timeout(t))
                    .map_err(|e| format!("cannot set a timeout on the ring socket: {e}"))?;
                if let Err(e) = peer::connect(&mut s, &spec.token, &hello(spec)) {
                    return Err(format!("rank {next_rank} at {addr} refused this rank's handshake: {e}"));
                }
                let mut verdict = [0u8];
                return match s.read_exact(&mut verdict) {
                    Ok(()) if verdict[0] == WELCOME => Ok(s),
                    _ => Err(format!(
                        "rank {next_rank} at {addr} holds the token but refused this rank as its previous rank (a \
                         different ring, world size or restart round); see that rank's output"
                    )),
                };
            }
            Err(e) => {
                last_error = e.to_string();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    Err(format!(
        "cannot connect to rank {next_rank} at {addr} within {:.0} s ({last_error})",
        spec.timeout.as_secs_f64()
    ))
}

fn accept_prev(
    listener: &TcpListener,
    spec: &RingSpec,
    prev_rank: usize,
    deadline: Instant,
    give_up: &AtomicBool,
) -> Result<TcpStream, String> {
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot configure the ring listener: {e}"))?;
    let expected = {
        let mut h = hello(spec);
        h[4..8].copy_from_slice(&(prev_rank as u32).to_le_bytes());
        h
    };
    loop {
        if give_up.load(Ordering::Relaxed) {
            return Err("gave up waiting for the previous rank: the connection to the next one failed".into());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "rank {prev_rank} did not connect within {:.0} s",
                spec.timeout.as_secs_f64()
            ));
        }
        match listener.accept() {
            Ok((mut s, from)) => {
                let t = Some(remaining(deadline).min(HANDSHAKE_LIMIT));
                let setup = s
                    .set_nonblocking(false)
                    .and_then(|_| s.set_read_timeout(t))
                    .and_then(|_| s.set_write_timeout(t));
                let verdict = match setup {
                    Err(e) => Err(format!("cannot configure the socket: {e}")),
                    Ok(()) => match peer::accept(&mut s, &spec.token) {
                        Err(e) => Err(e.to_string()),
                        Ok(h) if h != expected => Err(format!(
                            "it introduced itself as rank {} of {} in ring {:?}, but this rank waits for rank {prev_rank} of {} in ring {:?}",
                            u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")),
                            u32::from_le_bytes(h[0..4].try_into().expect("4 bytes")),
                            String::from_utf8_lossy(&h[16..]).trim_end_matches('\0'),
                            spec.world,
                            spec.ring_id
                        )),
                        Ok(_) => Ok(()),
                    },
                };
                // The connector learns whether it was taken (it proved the token either way).
                let said = s.write_all(&[if verdict.is_ok() { WELCOME } else { 0 }]);
                match verdict.and_then(|()| said.map_err(|e| format!("cannot answer it: {e}"))) {
                    Ok(()) => return Ok(s),
                    Err(why) => eprintln!(
                        "nabla-dist: rank {}: refused a ring connection from {from}: {why}",
                        spec.rank
                    ),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => wait_readable(listener, remaining(deadline)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("accepting rank {prev_rank}'s connection failed: {e}")),
        }
    }
}

/// Waits until the listener has a connection to accept, or `limit` passes.
fn wait_readable(listener: &TcpListener, limit: Duration) {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = limit.as_millis().clamp(1, 1000) as libc::c_int;
    // SAFETY: one valid pollfd that outlives the call; poll writes only its `revents`.
    unsafe { libc::poll(&mut fd, 1, ms) };
}
