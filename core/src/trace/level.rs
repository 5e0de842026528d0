//! Trace levels: one per transform call, open while its function is being traced.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

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
    /// While non-zero, ops do not record nodes for this level (used by `backward` on the
    /// long-lived autograd level while it runs derivative rules).
    paused: AtomicUsize,
}

impl Level {
    /// Opens a new level.
    pub fn open() -> Arc<Level> {
        Arc::new(Level { id: next_id(), open: AtomicBool::new(true), paused: AtomicUsize::new(0) })
    }

    /// Its id (larger for newer levels).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True while ops should record nodes for this level.
    pub fn is_recording(&self) -> bool {
        self.open.load(Ordering::Acquire) && self.paused.load(Ordering::Acquire) == 0
    }

    /// Stops recording for good: the traced function has returned.
    pub fn close(&self) {
        self.open.store(false, Ordering::Release);
    }

    /// Stops recording until the guard is dropped.
    pub(crate) fn pause(self: &Arc<Level>) -> PauseGuard {
        self.paused.fetch_add(1, Ordering::AcqRel);
        PauseGuard(self.clone())
    }
}

/// Resumes recording on a paused level when dropped.
pub(crate) struct PauseGuard(Arc<Level>);

impl Drop for PauseGuard {
    fn drop(&mut self) {
        self.0.paused.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The recording levels among `lists`, sorted by id, without repeats.
pub(crate) fn union_levels<'a>(lists: impl Iterator<Item = &'a [Arc<Level>]>) -> Vec<Arc<Level>> {
    let mut out: Vec<Arc<Level>> = Vec::new();
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
