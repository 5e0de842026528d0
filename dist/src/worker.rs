//! The communication thread of a data-parallel wrapper: it all-reduces buckets in the order
//! they arrive, on the wrapper's own process group, while the main thread goes on with the
//! backward sweep.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::comm::HostVec;
use crate::error::Result;
use crate::group::ProcessGroup;

/// A reduced bucket, or the error of its all-reduce, and the time the call took.
pub(crate) struct Reduced {
    pub data: HostVec,
    pub result: Result<()>,
    pub took: Duration,
}

struct Job {
    data: HostVec,
    reply: Sender<Reduced>,
}

/// A thread that sums buckets over the group's ranks, in submission order.
pub(crate) struct Worker {
    group: ProcessGroup,
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread.
    pub fn start(group: ProcessGroup) -> Worker {
        let (jobs, rx) = channel::<Job>();
        let own = group.clone();
        let thread = std::thread::Builder::new()
            .name("nabla-dist-allreduce".into())
            .spawn(move || {
                for mut job in rx {
                    let t0 = Instant::now();
                    let result = own.all_reduce_sum(job.data.as_buf_mut());
                    let _ = job.reply.send(Reduced {
                        data: job.data,
                        result,
                        took: t0.elapsed(),
                    });
                }
            })
            .expect("spawning the all-reduce thread");
        Worker {
            group,
            jobs: Some(jobs),
            thread: Some(thread),
        }
    }

    /// The group it reduces on (whose device transport, if any, takes device buckets).
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// Queues `data` for an all-reduce; the receiver yields it reduced.
    pub fn submit(&self, data: HostVec) -> Receiver<Reduced> {
        let (reply, rx) = channel();
        self.jobs
            .as_ref()
            .expect("worker running")
            .send(Job { data, reply })
            .expect("the all-reduce thread ended early");
        rx
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
