//! The collective watchdog: a background thread that ends the job when a collective does not
//! finish within its timeout, naming the rank, the operation, its sequence number and its size
//! (what PyTorch's NCCL watchdog does). Without it, a rank that died or stopped calling
//! collectives would leave every other rank waiting forever.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::comm::Communicator;

/// How often the watchdog looks at the calls it watches: a call is reported at most this long
/// after its deadline. Calls do not wake the watchdog, so watching costs a call only a map
/// insert and remove.
const POLL: Duration = Duration::from_millis(250);

/// One collective being watched; its message is formatted only if it expires.
struct Watched {
    deadline: Instant,
    describe: Box<dyn Fn() -> String + Send>,
    comm: Arc<dyn Communicator>,
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
            let now = Instant::now();
            if let Some(expired) = state.watched.values().find(|w| w.deadline <= now) {
                eprintln!("{}", (expired.describe)());
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

/// Watches a collective: when it is still running after `timeout`, prints what `describe`
/// returns and aborts the job through `comm`.
pub(crate) fn watch(
    comm: &Arc<dyn Communicator>,
    timeout: Duration,
    describe: impl Fn() -> String + Send + 'static,
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
            describe: Box::new(describe),
            comm: comm.clone(),
        },
    );
    WatchGuard { id }
}
