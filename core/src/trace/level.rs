//! Trace levels: one per transform call, open while its function is being traced.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh id, increasing: nodes and levels created later have larger ids, so sorting nodes by
/// id is a topological order of the graph.
pub(crate) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The trace of one transform call.
#[derive(Debug)]
pub struct Level {
    id: u64,
    open: AtomicBool,
    /// The id counter's value when the level closed (`u64::MAX` while open): ids between `id`
    /// and this were created while the traced function ran.
    closed_at: AtomicU64,
}

thread_local! {
    /// Ids of the levels paused on this thread: `backward` pauses the long-lived autograd level
    /// on its own thread while it runs derivative rules, without affecting other threads.
    static PAUSED: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

impl Level {
    /// Opens a new level.
    pub fn open() -> Arc<Level> {
        Arc::new(Level {
            id: next_id(),
            open: AtomicBool::new(true),
            closed_at: AtomicU64::new(u64::MAX),
        })
    }

    /// Its id (larger for newer levels).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True while ops should record nodes for this level.
    pub fn is_recording(&self) -> bool {
        self.open.load(Ordering::Acquire) && !PAUSED.with(|p| p.borrow().contains(&self.id))
    }

    /// Stops recording for good: the traced function has returned.
    pub fn close(&self) {
        self.closed_at.store(next_id(), Ordering::Release);
        self.open.store(false, Ordering::Release);
    }

    /// True when `id` (of a node or a vmap level) was created while this level's function ran.
    pub fn encloses(&self, id: u64) -> bool {
        id > self.id && id < self.closed_at.load(Ordering::Acquire)
    }

    /// Stops recording on this thread until the guard is dropped.
    pub(crate) fn pause(self: &Arc<Level>) -> PauseGuard {
        PAUSED.with(|p| p.borrow_mut().push(self.id));
        PauseGuard(self.id)
    }
}

/// Resumes recording of a paused level on this thread when dropped.
pub(crate) struct PauseGuard(u64);

impl Drop for PauseGuard {
    fn drop(&mut self) {
        PAUSED.with(|p| {
            let mut p = p.borrow_mut();
            if let Some(i) = p.iter().rposition(|&id| id == self.0) {
                p.remove(i);
            }
        });
    }
}

/// The recording levels among `lists`, sorted by id, without repeats.
pub(crate) fn union_levels<'a>(lists: impl Iterator<Item = &'a [Arc<Level>]>) -> super::node::Levels {
    let mut out = super::node::Levels::new();
    for list in lists {
        for l in list {
            if l.is_recording() && !out.iter().any(|o| o.id == l.id) {
                out.push(l.clone());
            }
        }
    }
    out.sort_by_key(|l| l.id);
    out
}
