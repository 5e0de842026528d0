//! The collective watchdog: a background thread that ends the job when a collective does not
//! finish within its timeout, naming the rank, the operation, its sequence number and its size
//! (what PyTorch's NCCL watchdog does). Without it, a rank that died or stopped calling
//! collectives would leave every other rank waiting forever.
//!
//! A host call is watched while it runs (a guard). A device call returns once queued, so it is
//! watched through a poll of its transport instead: the entry leaves when the poll says the
//! work has run, and the job ends when the poll reports a failure or the deadline passes.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::comm::Communicator;
use crate::device_comm::DevicePoll;

/// How often the watchdog looks at the calls it watches: a call is reported at most this long
/// after its deadline. Calls do not wake the watchdog, so watching costs a call only a map
/// insert and remove.
const POLL: Duration = Duration::from_millis(250);

/// Why a watched call ends the job.
pub(crate) enum Ending<'a> {
    /// Still running at its deadline.
    TimedOut,
    /// Its device transport reported this failure.
    Failed(&'a str),
}

/// One collective being watched; its message is formatted only if it ends the job.
struct Watched {
    deadline: Instant,
    describe: Box<dyn Fn(Ending<'_>) -> String + Send>,
    comm: Arc<dyn Communicator>,
    /// For a device call: whether its work has run.
    done: Option<DevicePoll>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    watched: HashMap<u64, Watched>,
}

struct Watchdog {
    state: Mutex<State>,
    wake: Condvar,
}

fn watchdog() -> &'static Watchdog {
    static DOG: OnceLock<&'static Watchdog> = OnceLock::new();
    DOG.get_or_init(|| {
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("nabla-dist-watchdog".into())
            .spawn(move || dog.run())
            .expect("spawning the collective watchdog thread");
        dog
    })
}

impl Watchdog {
    fn run(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Device calls whose work has run leave; one that failed ends the job.
            state.watched.retain(|_, w| match w.done.as_ref().map(|poll| poll()) {
                Some(Ok(true)) => false,
                Some(Err(e)) => {
                    eprintln!("{}", (w.describe)(Ending::Failed(&e)));
                    w.comm.abort(3)
                }
                Some(Ok(false)) | None => true,
            });
            let now = Instant::now();
            if let Some(expired) = state.watched.values().find(|w| w.deadline <= now) {
                eprintln!("{}", (expired.describe)(Ending::TimedOut));
                expired.comm.abort(3);
            }
            let next = state.watched.values().map(|w| w.deadline).min();
            let wait = next.map_or(POLL, |d| d.saturating_duration_since(now).min(POLL));
            state = self
                .wake
                .wait_timeout(state, wait + Duration::from_millis(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Removes its collective from the watch list when dropped (when the call returned).
pub(crate) struct WatchGuard {
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let dog = watchdog();
        dog.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .watched
            .remove(&self.id);
    }
}

/// Watches a host collective: when it is still running after `timeout`, prints what `describe`
/// returns and aborts the job through `comm`.
pub(crate) fn watch(
    comm: &Arc<dyn Communicator>,
    timeout: Duration,
    describe: impl Fn() -> String + Send + 'static,
) -> WatchGuard {
    insert(comm, timeout, Box::new(move |_| describe()), None)
}

/// Watches a device call already queued: it leaves the watch list once `done` says its work
/// has run; when `done` reports a failure, or it has not run after `timeout`, the job ends
/// through `comm` with what `describe` says of the ending.
pub(crate) fn watch_device(
    comm: &Arc<dyn Communicator>,
    timeout: Duration,
    describe: impl Fn(Ending<'_>) -> String + Send + 'static,
    done: DevicePoll,
) {
    // The entry stays until its poll says done, not until the guard drops.
    std::mem::forget(insert(comm, timeout, Box::new(describe), Some(done)));
}

/// How many calls are watched now (for tests).
#[cfg(test)]
fn watched() -> usize {
    watchdog().state.lock().unwrap_or_else(|e| e.into_inner()).watched.len()
}

fn insert(
    comm: &Arc<dyn Communicator>,
    timeout: Duration,
    describe: Box<dyn Fn(Ending<'_>) -> String + Send>,
    done: Option<DevicePoll>,
) -> WatchGuard {
    let dog = watchdog();
    let mut state = dog.state.lock().unwrap_or_else(|e| e.into_inner());
    let id = state.next_id;
    // A timeout too long to add to the clock means no deadline.
    let Some(deadline) = Instant::now().checked_add(timeout) else {
        return WatchGuard { id: u64::MAX };
    };
    state.next_id += 1;
    state.watched.insert(
        id,
        Watched {
            deadline,
            describe,
            comm: comm.clone(),
            done,
        },
    );
    WatchGuard { id }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_device_call_leaves_the_watch_list_once_its_poll_says_it_has_run() {
        let comm: Arc<dyn Communicator> = Arc::new(crate::single::SingleProcess);
        let polls = Arc::new(AtomicUsize::new(0));
        let seen = polls.clone();
        // Done at the third look; the deadline is far away.
        let done: DevicePoll = Box::new(move || Ok(seen.fetch_add(1, Ordering::SeqCst) >= 2));
        let before = watched();
        watch_device(
            &comm,
            Duration::from_secs(3600),
            |_| unreachable!("must not end the job"),
            done,
        );
        assert_eq!(watched(), before + 1);
        let start = Instant::now();
        while polls.load(Ordering::SeqCst) < 3 || watched() > before {
            assert!(start.elapsed() < Duration::from_secs(10), "still watched after 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(watched(), before);
    }
}
