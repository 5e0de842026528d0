//! Shared-memory pipes between ring neighbours on the same host: loopback TCP costs two
//! system calls and a trip through the network stack per chunk, shared memory one copy in and
//! one copy out.
//!
//! Each rank creates a *mailbox*, a file in `/dev/shm` (mode 600, unlinked as soon as its
//! neighbours have mapped it) holding a doorbell and the ring buffer its previous rank writes
//! into. A rank maps its own mailbox and those of its two neighbours: it writes into the next
//! rank's ring and rings the next rank's doorbell; it reads from its own ring and rings the
//! previous rank's doorbell (there is room again). A rank that has to wait, for data or for
//! room, waits on its own doorbell with a futex, so one word covers both directions.
//!
//! The TCP connection that carried the handshake stays open beside each pipe: when a neighbour
//! dies, its socket closes, and a waiting rank sees that within [`LIVENESS_SLICE`].

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Bytes of a mailbox's ring.
const RING_BYTES: usize = 4 << 20;
/// Offsets of the doorbell, the ring's head (bytes ever written) and tail (bytes ever read),
/// each on its own cache line, and of the ring's data.
const BELL: usize = 0;
const HEAD: usize = 128;
const TAIL: usize = 256;
const DATA: usize = 384;
const FILE_BYTES: usize = DATA + RING_BYTES;
/// The prefix of every mailbox's path (a peer's path is refused unless it has it); shared
/// with the launcher, which removes the mailboxes of ranks that died.
/// (Checked against `nabla_launch::peer`'s parts by a test below.)
pub(crate) const PATH_PREFIX: &str = "/dev/shm/nabla-ring-";
/// How long a waiting rank sleeps before it looks whether a neighbour's socket has closed.
pub(crate) const LIVENESS_SLICE: Duration = Duration::from_millis(50);

/// A mapped mailbox.
pub(crate) struct Mailbox {
    base: *mut u8,
    path: PathBuf,
    owner: bool,
}

// SAFETY: the mapping lives as long as the value; all shared words are accessed through
// atomics, and each ring byte range is written by one side only while the head/tail protocol
// gives it to that side.
unsafe impl Send for Mailbox {}
// SAFETY: as above.
unsafe impl Sync for Mailbox {}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mailbox({})", self.path.display())
    }
}

fn map(file: &std::fs::File) -> std::io::Result<*mut u8> {
    // SAFETY: a shared read-write mapping of FILE_BYTES of a file at least that long; the
    // result is checked for MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            FILE_BYTES,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p as *mut u8)
}

impl Mailbox {
    /// Creates this rank's mailbox (a fresh, exclusive file of mode 600).
    pub(crate) fn create() -> std::io::Result<Mailbox> {
        let mut random = [0u8; 8];
        getrandom_bytes(&mut random)?;
        let path = PathBuf::from(format!(
            "{PATH_PREFIX}{}-{:016x}",
            std::process::id(),
            u64::from_le_bytes(random)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        // Reserve the pages now: on a tmpfs that is too small, a sparse file would fail later,
        // with SIGBUS on a write in the middle of a collective, instead of here.
        // SAFETY: posix_fallocate on an open, writable descriptor; the result is checked.
        let reserved = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, FILE_BYTES as libc::off_t) };
        let made = if reserved == 0 {
            map(&file)
        } else {
            Err(std::io::Error::from_raw_os_error(reserved))
        };
        match made {
            Ok(base) => Ok(Mailbox {
                base,
                path,
                owner: true,
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Maps a neighbour's mailbox; refuses paths outside [`PATH_PREFIX`] and files of another
    /// size.
    pub(crate) fn open(path: &str) -> std::io::Result<Mailbox> {
        let name = path.strip_prefix(PATH_PREFIX).unwrap_or("/");
        if name.is_empty() || name.contains('/') {
            return Err(std::io::Error::other(format!("{path:?} is not a ring mailbox path")));
        }
        // Never through a symbolic link (/dev/shm is writable by every user), and only a
        // regular file of this user's that no one else can read or write.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let meta = file.metadata()?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if !meta.file_type().is_file() || meta.uid() != me || meta.mode() & 0o077 != 0 {
            return Err(std::io::Error::other(format!(
                "{path} is not a private regular file of this user"
            )));
        }
        if meta.len() != FILE_BYTES as u64 {
            return Err(std::io::Error::other(format!("{path} has the wrong size")));
        }
        Ok(Mailbox {
            base: map(&file)?,
            path: Path::new(path).to_path_buf(),
            owner: false,
        })
    }

    /// The file's path (what a neighbour opens).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the file (the mappings stay valid); for the owner, once its neighbours mapped it.
    pub(crate) fn unlink(&self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    fn word32(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: offset is inside the mapping, 4-aligned (the mapping is page-aligned), and
        // the word is only ever accessed atomically.
        unsafe { &*(self.base.add(offset) as *const AtomicU32) }
    }

    fn word64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as for word32, 8-aligned.
        unsafe { &*(self.base.add(offset) as *const AtomicU64) }
    }

    fn bell(&self) -> &AtomicU32 {
        self.word32(BELL)
    }

    /// Rings the doorbell: wakes the owner if it waits.
    fn ring(&self) {
        let bell = self.bell();
        bell.fetch_add(1, Ordering::Release);
        // SAFETY: FUTEX_WAKE on a valid, aligned, shared u32; no timeout pointer is read.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                bell.as_ptr(),
                libc::FUTEX_WAKE,
                i32::MAX,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }

    /// The doorbell's current value (read before checking whether to wait).
    pub(crate) fn bell_value(&self) -> u32 {
        self.bell().load(Ordering::Acquire)
    }

    /// Sleeps until the doorbell moves from `seen`, or `limit` passes.
    pub(crate) fn wait(&self, seen: u32, limit: Duration) {
        let ts = libc::timespec {
            tv_sec: limit.as_secs() as libc::time_t,
            tv_nsec: limit.subsec_nanos() as libc::c_long,
        };
        // SAFETY: FUTEX_WAIT on a valid, aligned, shared u32 with a valid relative timeout;
        // it returns at once when the word no longer holds `seen`.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.bell().as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                &ts as *const libc::timespec,
            );
        }
    }

    /// Copies `len` bytes between `bytes` and the ring at stream position `pos`.
    fn copy(&self, pos: u64, bytes: *mut u8, len: usize, into_ring: bool) {
        assert!(len <= RING_BYTES, "a ring copy of {len} bytes is larger than the ring");
        let at = (pos % RING_BYTES as u64) as usize;
        let first = len.min(RING_BYTES - at);
        // SAFETY: the two ranges lie inside the ring's data (at < RING_BYTES, first <=
        // RING_BYTES - at, len - first <= RING_BYTES) and inside the caller's buffer of `len`
        // bytes; the head/tail protocol gives this range to this side alone.
        unsafe {
            let ring = self.base.add(DATA);
            if into_ring {
                std::ptr::copy_nonoverlapping(bytes, ring.add(at), first);
                std::ptr::copy_nonoverlapping(bytes.add(first), ring, len - first);
            } else {
                std::ptr::copy_nonoverlapping(ring.add(at), bytes, first);
                std::ptr::copy_nonoverlapping(ring, bytes.add(first), len - first);
            }
        }
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        // SAFETY: base is the start of a FILE_BYTES mapping made by this value.
        unsafe { libc::munmap(self.base as *mut libc::c_void, FILE_BYTES) };
        self.unlink();
    }
}

fn getrandom_bytes(buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: getrandom writes at most buf.len() bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
    if n as usize != buf.len() {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The writing end of a pipe into the next rank's ring.
#[derive(Debug)]
pub(crate) struct ShmOut {
    /// The next rank's mailbox.
    pub next: Arc<Mailbox>,
}

impl ShmOut {
    /// Writes what fits of `bytes`; 0 when the ring is full.
    pub(crate) fn write_some(&self, bytes: &[u8]) -> Result<usize, String> {
        let head = self.next.word64(HEAD).load(Ordering::Relaxed);
        let tail = self.next.word64(TAIL).load(Ordering::Acquire);
        let free = RING_BYTES - used(head, tail)?;
        let n = free.min(bytes.len());
        if n == 0 {
            return Ok(0);
        }
        self.next.copy(head, bytes.as_ptr() as *mut u8, n, true);
        self.next
            .word64(HEAD)
            .store(head.wrapping_add(n as u64), Ordering::Release);
        self.next.ring();
        Ok(n)
    }

    /// Whether the ring has room.
    pub(crate) fn has_room(&self) -> bool {
        let head = self.next.word64(HEAD).load(Ordering::Relaxed);
        let tail = self.next.word64(TAIL).load(Ordering::Acquire);
        // A corrupted ring counts as ready, so that the next write reports it.
        used(head, tail).map_or(true, |u| u < RING_BYTES)
    }
}

/// The reading end of this rank's own ring.
#[derive(Debug)]
pub(crate) struct ShmIn {
    /// This rank's mailbox.
    pub mine: Arc<Mailbox>,
    /// The previous rank's mailbox (its doorbell says there is room again).
    pub prev: Arc<Mailbox>,
}

impl ShmIn {
    /// Reads what has arrived, up to `into.len()` bytes; 0 when nothing has.
    pub(crate) fn read_some(&self, into: &mut [u8]) -> Result<usize, String> {
        let tail = self.mine.word64(TAIL).load(Ordering::Relaxed);
        let head = self.mine.word64(HEAD).load(Ordering::Acquire);
        let n = used(head, tail)?.min(into.len());
        if n == 0 {
            return Ok(0);
        }
        self.mine.copy(tail, into.as_mut_ptr(), n, false);
        self.mine
            .word64(TAIL)
            .store(tail.wrapping_add(n as u64), Ordering::Release);
        self.prev.ring();
        Ok(n)
    }

    /// Whether data has arrived.
    pub(crate) fn has_data(&self) -> bool {
        let tail = self.mine.word64(TAIL).load(Ordering::Relaxed);
        self.mine.word64(HEAD).load(Ordering::Acquire) != tail
    }
}

/// Bytes in a ring between `tail` and `head`; an error when the words say more than the ring
/// holds (memory another process corrupted).
fn used(head: u64, tail: u64) -> Result<usize, String> {
    let used = head.wrapping_sub(tail);
    if used > RING_BYTES as u64 {
        return Err(format!(
            "a shared-memory ring's counters are corrupt (head {head}, tail {tail}); the ring cannot go on"
        ));
    }
    Ok(used as usize)
}

/// FNV-1a of `bytes`: a stable 64-bit fingerprint (equal inputs, equal keys; not for secrets).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Identifies "the same host" for shared memory: the boot, the network namespace (ranks in
/// different namespaces are treated as different nodes) and the mount namespace (which
/// decides what `/dev/shm` is).
pub(crate) fn host_key() -> u64 {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = |p: &str| {
        std::fs::read_link(p)
            .map(|l| l.display().to_string())
            .unwrap_or_default()
    };
    let text = format!(
        "{}|{}|{}",
        boot.trim(),
        ns("/proc/self/ns/net"),
        ns("/proc/self/ns/mnt")
    );
    fnv1a(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_cross_the_ring_in_order_across_the_wrap() {
        let mine = Arc::new(Mailbox::create().unwrap());
        let other = Arc::new(Mailbox::open(mine.path().to_str().unwrap()).unwrap());
        let out = ShmOut { next: other.clone() };
        let inn = ShmIn {
            mine: mine.clone(),
            prev: mine.clone(),
        };
        let data: Vec<u8> = (0..3 * RING_BYTES + 17).map(|i| (i * 31 % 251) as u8).collect();
        let mut got = vec![0u8; data.len()];
        let (mut sent, mut recvd) = (0, 0);
        while recvd < data.len() {
            sent += out.write_some(&data[sent..(sent + 1_000_003).min(data.len())]).unwrap();
            recvd += inn
                .read_some(&mut got[recvd..(recvd + 777_777).min(data.len())])
                .unwrap();
        }
        assert_eq!(got, data);
        mine.unlink();
        assert!(!mine.path().exists());
    }

    #[test]
    fn only_mailbox_paths_are_opened() {
        assert!(Mailbox::open("/etc/passwd").is_err());
        assert!(Mailbox::open(&format!("{PATH_PREFIX}../../etc/passwd")).is_err());
        assert!(Mailbox::open(PATH_PREFIX).is_err());
        // A symbolic link with a mailbox's name is refused, even to a real mailbox.
        let real = Mailbox::create().unwrap();
        let link = format!("{PATH_PREFIX}link-{}", std::process::id());
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        let refused = Mailbox::open(&link);
        std::fs::remove_file(&link).unwrap();
        assert!(refused.is_err(), "a symlink was followed");
        assert!(Mailbox::open(real.path().to_str().unwrap()).is_ok());
    }

    #[test]
    fn the_path_prefix_is_the_launchers() {
        use nabla_launch::peer::{MAILBOX_DIR, MAILBOX_PREFIX};
        assert_eq!(PATH_PREFIX, format!("{MAILBOX_DIR}/{MAILBOX_PREFIX}"));
    }

    #[test]
    fn corrupt_counters_are_an_error_not_a_wild_copy() {
        assert_eq!(used(10, 4), Ok(6));
        assert_eq!(used(3, u64::MAX), Ok(4), "positions wrap around u64");
        assert!(used(4, 10).unwrap_err().contains("corrupt"));
        assert!(used(RING_BYTES as u64 + 1, 0).is_err());
    }
}
