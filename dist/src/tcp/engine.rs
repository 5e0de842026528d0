//! The data mover of the TCP ring: runs one [`Plan`] (an ordered list of segment sends to the
//! next rank and segment receives from the previous one, with dependencies between them) on two
//! non-blocking sockets with `poll`, in one thread. Sends and receives progress together, so a
//! segment received is forwarded while the next one is still arriving (the pipelining of a ring
//! all-reduce), and neither side can deadlock on full socket buffers.
//!
//! Every collective starts with a [`Header`] on the wire. The receiver compares it with the call
//! it is making itself, so ranks that call different collectives (or the same with other sizes)
//! get an error naming both calls instead of silently mixing their bytes.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::comm::CommResult;
use crate::tcp::shm::{LIVENESS_SLICE, Mailbox, ShmIn, ShmOut};
use std::sync::Arc;

/// Elements a ring moves: plain numbers whose bytes travel as they are in memory (all ranks of
/// a job share one byte order).
pub(crate) trait Elem: bytemuck::Pod + Send {
    /// The type's name on the wire and in messages.
    const NAME: &'static str;
    /// `dst[i] += src[i]`.
    fn add_into(dst: &mut [Self], src: &[Self]);
}

macro_rules! float_elem {
    ($t:ty) => {
        impl Elem for $t {
            const NAME: &'static str = stringify!($t);
            fn add_into(dst: &mut [Self], src: &[Self]) {
                for (d, s) in dst.iter_mut().zip(src) {
                    *d += *s;
                }
            }
        }
    };
}
float_elem!(f32);
float_elem!(f64);

impl Elem for i64 {
    const NAME: &'static str = "i64";
    fn add_into(dst: &mut [Self], src: &[Self]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = d.wrapping_add(*s);
        }
    }
}

impl Elem for u8 {
    const NAME: &'static str = "u8";
    fn add_into(dst: &mut [Self], src: &[Self]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = d.wrapping_add(*s);
        }
    }
}

/// What a received segment does to the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Combine {
    /// Adds the received values (reduce-scatter).
    Add,
    /// Overwrites with the received values (all-gather, broadcast).
    Copy,
}

/// Send the elements `range` of the buffer to the next rank, once receive `after_recv` is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SendOp {
    pub range: Range<usize>,
    pub after_recv: Option<usize>,
}

/// Receive `range.len()` elements from the previous rank into `range`, once send `after_send`
/// is done (it reads the same elements).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RecvOp {
    pub range: Range<usize>,
    pub combine: Combine,
    pub after_send: Option<usize>,
}

/// The sends and receives of one collective on one rank, each list in wire order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub sends: Vec<SendOp>,
    pub recvs: Vec<RecvOp>,
}

/// Bytes of the header that opens every collective on the wire.
pub(crate) const HEADER_LEN: usize = 24;

/// Identifies a call: which collective, its number on this communicator, its element count and
/// type. Equal on every rank for the same call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    pub op: &'static str,
    pub seq: u64,
    pub count: u64,
    pub elem: &'static str,
}

const OPS: [&str; 5] = ["all_reduce_sum", "broadcast", "barrier", "all_gather_bytes", "unknown"];
const ELEMS: [&str; 5] = ["f32", "f64", "i64", "u8", "unknown"];

fn code(list: &[&'static str], name: &str) -> u32 {
    list.iter().position(|x| *x == name).unwrap_or(list.len() - 1) as u32
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&code(&OPS, self.op).to_le_bytes());
        b[4..8].copy_from_slice(&code(&ELEMS, self.elem).to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let word = |r: Range<usize>| u32::from_le_bytes(b[r].try_into().expect("4 bytes")) as usize;
        let long = |r: Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        Header {
            op: OPS[word(0..4).min(OPS.len() - 1)],
            elem: ELEMS[word(4..8).min(ELEMS.len() - 1)],
            seq: long(8..16),
            count: long(16..24),
        }
    }

    fn describe(&self) -> String {
        format!("{} call #{} of {} {}", self.op, self.seq, self.count, self.elem)
    }
}

/// Where a rank's bytes go: a TCP socket, or a shared-memory pipe to a neighbour on the same
/// host (with the socket kept open to notice the neighbour's death).
#[derive(Debug)]
pub(crate) enum Out {
    /// Over TCP.
    Tcp(TcpStream),
    /// Into the next rank's shared-memory ring.
    Shm { pipe: ShmOut, socket: TcpStream },
}

/// Where a rank's bytes come from (see [`Out`]).
#[derive(Debug)]
pub(crate) enum In {
    /// Over TCP.
    Tcp(TcpStream),
    /// From this rank's shared-memory ring.
    Shm { pipe: ShmIn, socket: TcpStream },
}

/// A rank's two connections in the ring.
#[derive(Debug)]
pub(crate) struct Link {
    /// To the next rank (we send).
    pub next: Out,
    /// From the previous rank (we receive).
    pub prev: In,
    pub next_rank: usize,
    pub prev_rank: usize,
    /// This rank's mailbox, whose doorbell it waits on when a pipe is shared memory.
    pub mailbox: Option<Arc<Mailbox>>,
    /// How long the ring may move no byte before the call fails.
    pub stall_timeout: Duration,
}

impl Link {
    /// Which transport each direction uses (`tcp` or `shm`), for messages and tests.
    pub(crate) fn transports(&self) -> (&'static str, &'static str) {
        let out = if matches!(self.next, Out::Shm { .. }) {
            "shm"
        } else {
            "tcp"
        };
        let inn = if matches!(self.prev, In::Shm { .. }) {
            "shm"
        } else {
            "tcp"
        };
        (out, inn)
    }
}

/// Runs `plan` over `buf`; `staging` is reused between calls for received segments.
pub(crate) fn run<T: Elem>(
    link: &mut Link,
    buf: &mut [T],
    plan: &Plan,
    header: Header,
    staging: &mut Vec<T>,
) -> CommResult<()> {
    let sending = !plan.sends.is_empty();
    let receiving = !plan.recvs.is_empty();
    let out_header = header.encode();
    let mut out_header_sent = if sending { 0 } else { HEADER_LEN };
    let mut in_header = [0u8; HEADER_LEN];
    let mut in_header_got = if receiving { 0 } else { HEADER_LEN };
    let (mut send_idx, mut send_off) = (0usize, 0usize);
    let (mut recv_idx, mut recv_off) = (0usize, 0usize);
    let mut last_progress = Instant::now();
    loop {
        let sends_done = send_idx == plan.sends.len();
        let recvs_done = recv_idx == plan.recvs.len() && in_header_got == HEADER_LEN;
        if sends_done && recvs_done {
            return Ok(());
        }
        let mut progressed = false;
        let (mut want_out, mut want_in) = (false, false);

        // The send side: the header, then each segment once its dependency is met.
        if !sends_done {
            let bytes: Option<&[u8]> = if out_header_sent < HEADER_LEN {
                Some(&out_header[out_header_sent..])
            } else {
                let op = &plan.sends[send_idx];
                if op.after_recv.is_none_or(|r| r < recv_idx) {
                    Some(&bytemuck::cast_slice(&buf[op.range.clone()])[send_off..])
                } else {
                    None
                }
            };
            if let Some(bytes) = bytes {
                let written = if bytes.is_empty() {
                    Ok(0)
                } else {
                    send_some(&mut link.next, bytes, link.next_rank, &header)?
                };
                match written {
                    Ok(n) => {
                        progressed = true;
                        if out_header_sent < HEADER_LEN {
                            out_header_sent += n;
                        } else {
                            send_off += n;
                            let op = &plan.sends[send_idx];
                            if send_off == op.range.len() * size_of::<T>() {
                                send_idx += 1;
                                send_off = 0;
                            }
                        }
                    }
                    Err(()) => want_out = true,
                }
            }
        }

        // The receive side: the header (checked), then each segment once its dependency is met.
        if !recvs_done {
            if in_header_got < HEADER_LEN {
                match recv_some(&mut link.prev, &mut in_header[in_header_got..], link.prev_rank, &header)? {
                    Ok(n) => {
                        progressed = true;
                        in_header_got += n;
                        if in_header_got == HEADER_LEN {
                            let theirs = Header::decode(&in_header);
                            if theirs != header {
                                return Err(format!(
                                    "ranks called different collectives: rank {} sent {}, but this rank is in {}. \
                                     Every rank must make the same calls in the same order with the same sizes",
                                    link.prev_rank,
                                    theirs.describe(),
                                    header.describe()
                                ));
                            }
                        }
                    }
                    Err(()) => want_in = true,
                }
            } else {
                let op = &plan.recvs[recv_idx];
                if op.after_send.is_none_or(|s| s < send_idx) {
                    let len = op.range.len();
                    let total = len * size_of::<T>();
                    let got = if total == 0 {
                        Ok(0)
                    } else if op.combine == Combine::Copy {
                        // Straight into place: the send that read these elements is done.
                        let target = &mut bytemuck::cast_slice_mut::<T, u8>(&mut buf[op.range.clone()])[recv_off..];
                        recv_some(&mut link.prev, target, link.prev_rank, &header)?
                    } else {
                        if staging.len() < len {
                            staging.resize(len, T::zeroed());
                        }
                        let target = &mut bytemuck::cast_slice_mut::<T, u8>(&mut staging[..len])[recv_off..];
                        recv_some(&mut link.prev, target, link.prev_rank, &header)?
                    };
                    match got {
                        Ok(n) => {
                            progressed = true;
                            if op.combine == Combine::Add {
                                // Add the elements completed by this read while they are in cache.
                                let (from, to) = (recv_off / size_of::<T>(), (recv_off + n) / size_of::<T>());
                                let start = op.range.start;
                                T::add_into(&mut buf[start + from..start + to], &staging[from..to]);
                            }
                            recv_off += n;
                            if recv_off == total {
                                recv_idx += 1;
                                recv_off = 0;
                            }
                        }
                        Err(()) => want_in = true,
                    }
                }
            }
        }

        if progressed {
            last_progress = Instant::now();
            continue;
        }
        if !want_in && !want_out {
            return Err(format!(
                "internal error: the ring plan waits on itself (send {send_idx} of {}, receive {recv_idx} of {}); please report",
                plan.sends.len(),
                plan.recvs.len()
            ));
        }
        let waited = last_progress.elapsed();
        if waited >= link.stall_timeout {
            let stuck = match (want_out, want_in) {
                (true, true) => format!(
                    "rank {} took no data and rank {} sent none",
                    link.next_rank, link.prev_rank
                ),
                (true, false) => format!("rank {} took no data", link.next_rank),
                _ => format!("rank {} sent no data", link.prev_rank),
            };
            return Err(format!(
                "{stuck} for {:.1} s during {}: a peer is stalled, not in the same call, or its host is \
                 unreachable (NABLA_DIST_TIMEOUT sets this limit)",
                waited.as_secs_f64(),
                header.describe()
            ));
        }
        wait_ready(link, want_out, want_in, link.stall_timeout - waited)?;
    }
}

/// One non-blocking socket call: `Ok(Ok(n))` moved n bytes (n > 0), `Ok(Err(()))` would block.
/// A closed connection or an error names the peer and the call; `what` is `sending to` or
/// `receiving from`.
fn nonblocking(
    mut io: impl FnMut() -> std::io::Result<usize>,
    what: &str,
    peer: usize,
    header: &Header,
) -> CommResult<Result<usize, ()>> {
    loop {
        match io() {
            Ok(0) => {
                return Err(format!(
                    "rank {peer} closed its connection during {} ({what} it); that rank probably failed: see its output",
                    header.describe()
                ));
            }
            Ok(n) => return Ok(Ok(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Err(())),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(format!(
                    "{what} rank {peer} failed during {} ({e}); that rank probably failed: see its output",
                    header.describe()
                ));
            }
        }
    }
}

/// Sends what the transport takes now: `Ok(Ok(n))` sent n bytes (n > 0), `Ok(Err(()))` would
/// block.
fn send_some(out: &mut Out, bytes: &[u8], peer: usize, header: &Header) -> CommResult<Result<usize, ()>> {
    match out {
        Out::Tcp(s) => nonblocking(|| s.write(bytes), "sending to", peer, header),
        Out::Shm { pipe, .. } => Ok(match pipe.write_some(bytes)? {
            0 => Err(()),
            n => Ok(n),
        }),
    }
}

/// Receives what has arrived (see [`send_some`]).
fn recv_some(inn: &mut In, into: &mut [u8], peer: usize, header: &Header) -> CommResult<Result<usize, ()>> {
    match inn {
        In::Tcp(s) => nonblocking(|| s.read(into), "receiving from", peer, header),
        In::Shm { pipe, .. } => Ok(match pipe.read_some(into)? {
            0 => Err(()),
            n => Ok(n),
        }),
    }
}

fn pollfd(fd: std::os::fd::RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

/// `poll` on `fds` for up to `ms` milliseconds; returns how many are ready.
fn poll(fds: &mut [libc::pollfd], ms: libc::c_int) -> CommResult<usize> {
    if fds.is_empty() {
        return Ok(0);
    }
    // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfd structs that lives
    // across the call; poll writes only their `revents` fields.
    let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() != ErrorKind::Interrupted {
            return Err(format!("poll on the ring's sockets failed: {e}"));
        }
        return Ok(0);
    }
    Ok(r as usize)
}

/// Blocks until the next rank can take bytes (`out`) or the previous one has sent some (`inn`),
/// or `limit` passes. Sockets wait in `poll`; shared-memory pipes wait on this rank's doorbell,
/// looking at their neighbours' sockets every [`LIVENESS_SLICE`] for a closed connection.
fn wait_ready(link: &Link, out: bool, inn: bool, limit: Duration) -> CommResult<()> {
    let mut sockets = Vec::with_capacity(2);
    if let (true, Out::Tcp(s)) = (out, &link.next) {
        sockets.push(pollfd(s.as_raw_fd(), libc::POLLOUT));
    }
    if let (true, In::Tcp(s)) = (inn, &link.prev) {
        sockets.push(pollfd(s.as_raw_fd(), libc::POLLIN));
    }
    let shm_out = match (&link.next, out) {
        (Out::Shm { pipe, .. }, true) => Some(pipe),
        _ => None,
    };
    let shm_in = match (&link.prev, inn) {
        (In::Shm { pipe, .. }, true) => Some(pipe),
        _ => None,
    };
    let Some(mailbox) = link.mailbox.as_ref().filter(|_| shm_out.is_some() || shm_in.is_some()) else {
        let ms = limit.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        poll(&mut sockets, ms)?;
        // Readiness, errors and hang-ups all show on the next read or write.
        return Ok(());
    };
    let seen = mailbox.bell_value();
    if shm_out.is_some_and(|p| p.has_room()) || shm_in.is_some_and(|p| p.has_data()) {
        return Ok(());
    }
    if poll(&mut sockets, 0)? > 0 {
        return Ok(());
    }
    // With a socket to watch as well, sleep briefly so that its data is not kept waiting.
    let slice = if sockets.is_empty() {
        LIVENESS_SLICE
    } else {
        Duration::from_millis(1)
    };
    mailbox.wait(seen, slice.min(limit));
    // A neighbour that finished may have written its last bytes and closed at once: what it
    // left is read first, and only a pipe with nothing to move makes a closed socket an error.
    if shm_out.is_some_and(|p| p.has_room()) || shm_in.is_some_and(|p| p.has_data()) {
        return Ok(());
    }
    check_alive(link, shm_out.is_some(), shm_in.is_some())
}

/// A neighbour behind a shared-memory pipe is alive while its socket (which never carries data
/// after the handshake) has nothing to read: readable means closed.
/// Only the neighbours this rank waits on are checked: one that finished its part of the call
/// may close its connection while this rank still talks to the other.
fn check_alive(link: &Link, out: bool, inn: bool) -> CommResult<()> {
    let watched = [
        match (&link.next, out) {
            (Out::Shm { socket, .. }, true) => Some((socket, link.next_rank)),
            _ => None,
        },
        match (&link.prev, inn) {
            (In::Shm { socket, .. }, true) => Some((socket, link.prev_rank)),
            _ => None,
        },
    ];
    for (socket, peer) in watched.into_iter().flatten() {
        let mut fd = [pollfd(socket.as_raw_fd(), libc::POLLIN | libc::POLLRDHUP)];
        if poll(&mut fd, 0)? > 0 {
            return Err(format!(
                "rank {peer} closed its connection (its shared-memory pipe went quiet); that rank probably failed: \
                 see its output"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_survive_the_wire_and_name_the_call() {
        let h = Header {
            op: "broadcast",
            seq: 41,
            count: 1 << 40,
            elem: "f64",
        };
        assert_eq!(Header::decode(&h.encode()), h);
        assert_eq!(h.describe(), "broadcast call #41 of 1099511627776 f64");
    }
}
