//! The collective watchdog: a background thread that ends the job when a collective does not
//! finish within its timeout, naming the rank, the operation, its sequence number and its size
//! (what PyTorch's NCCL watchdog does). Without it, a rank that died or stopped calling
//! collectives would leave every other rank waiting forever.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::comm::Communicator;

/// One collective being watched.
struct Watched {
    deadline: Instant,
    describe: String,
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
                eprintln!("{}", expired.describe);
                expired.comm.abort(3);
            }
            let next = state.watched.values().map(|w| w.deadline).min();
            state = match next {
                Some(deadline) => {
                    let wait = deadline.saturating_duration_since(now) + Duration::from_millis(5);
                    self.wake.wait_timeout(state, wait).unwrap_or_else(|e| e.into_inner()).0
                }
                None => self.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
            };
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

/// Watches a collective: when it is still running after `timeout`, prints `describe` and aborts
/// the job through `comm`.
pub(crate) fn watch(comm: &Arc<dyn Communicator>, timeout: Duration, describe: impl FnOnce() -> String) -> WatchGuard {
    let dog = watchdog();
    let mut state = dog.state.lock().unwrap_or_else(|e| e.into_inner());
    let id = state.next_id;
    state.next_id += 1;
    state.watched.insert(
        id,
        Watched {
            deadline: Instant::now() + timeout,
            describe: describe(),
            comm: comm.clone(),
        },
    );
    dog.wake.notify_all();
    WatchGuard { id }
}
