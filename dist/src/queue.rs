//! The launch queue of bucketed gradient all-reduces, shared by `DataParallel` (fed by
//! `backward`'s sync hook) and the functional `value_and_grad` (fed by the pullback's ready
//! reports): leaves are marked ready as their gradients become final, buckets start strictly in
//! plan order once all their leaves are ready, and the results come back in the same order.

use std::collections::VecDeque;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use nabla_core::Tensor;

use crate::bucket::BucketPlan;
use crate::error::{DistError, Result};
use crate::pack::{pack, unpack};
use crate::worker::{Reduced, Worker};

/// Which leaves are ready and which buckets have started, for one sync.
pub(crate) struct BucketQueue {
    /// The buckets, in launch order.
    pub plan: BucketPlan,
    numels: Vec<usize>,
    ready: Vec<bool>,
    bucket_ready: Vec<usize>,
    next_launch: usize,
    in_flight: VecDeque<(usize, Receiver<Reduced>)>,
    /// Bytes this rank contributed since the last reset.
    pub bytes: usize,
}

impl BucketQueue {
    /// A queue for `plan` over leaves of `numels` elements.
    pub fn new(plan: BucketPlan, numels: Vec<usize>) -> BucketQueue {
        BucketQueue {
            ready: vec![false; numels.len()],
            bucket_ready: vec![0; plan.buckets.len()],
            plan,
            numels,
            next_launch: 0,
            in_flight: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Forgets the last sync (nothing may be in flight).
    pub fn reset(&mut self) {
        debug_assert!(self.in_flight.is_empty());
        self.ready.iter_mut().for_each(|r| *r = false);
        self.bucket_ready.iter_mut().for_each(|r| *r = 0);
        self.next_launch = 0;
        self.bytes = 0;
    }

    /// Marks leaf `i` ready (idempotent).
    pub fn mark_ready(&mut self, i: usize) {
        if !self.ready[i] {
            self.ready[i] = true;
            self.bucket_ready[self.plan.bucket_of[i]] += 1;
        }
    }

    /// Marks every leaf ready (the sweep is over: the rest got no gradient).
    pub fn mark_all_ready(&mut self) {
        for i in 0..self.ready.len() {
            self.mark_ready(i);
        }
    }

    /// Buckets started so far.
    pub fn launched(&self) -> usize {
        self.next_launch
    }

    /// Starts, in plan order, every bucket whose leaves are all ready: packs `grad(leaf)` (zeros
    /// where `None`) times `weight` and queues it on `worker`.
    pub fn launch_ready(&mut self, worker: &Worker, weight: f64, grad: impl Fn(usize) -> Option<Tensor>) {
        while self.next_launch < self.plan.buckets.len() {
            let b = self.next_launch;
            let bucket = &self.plan.buckets[b];
            if self.bucket_ready[b] < bucket.leaves.len() {
                break;
            }
            let grads: Vec<Option<Tensor>> = bucket.leaves.iter().map(|&l| grad(l)).collect();
            let data = pack(bucket, &grads, &self.numels, weight);
            self.bytes += data.len() * bucket.dtype.size_in_bytes();
            self.in_flight.push_back((b, worker.submit(data)));
            self.next_launch += 1;
        }
    }

    /// Waits for every started bucket, in order, and hands each leaf's reduced gradient (shaped
    /// and placed like `leaves[leaf]`) to `deliver`. Returns the time the all-reduces took.
    pub fn drain(&mut self, leaves: &[Tensor], mut deliver: impl FnMut(usize, Tensor)) -> Result<Duration> {
        let mut comm = Duration::ZERO;
        while let Some((b, rx)) = self.in_flight.pop_front() {
            let reduced = rx
                .recv()
                .map_err(|_| DistError::Usage("the all-reduce thread ended without an answer".into()))?;
            reduced.result?;
            comm += reduced.took;
            let bucket = &self.plan.buckets[b];
            let like: Vec<&Tensor> = bucket.leaves.iter().map(|&l| &leaves[l]).collect();
            for (k, g) in unpack(bucket, reduced.data, &like).into_iter().enumerate() {
                deliver(bucket.leaves[k], g);
            }
        }
        Ok(comm)
    }
}
