//! The launch queue of bucketed gradient all-reduces, shared by `DataParallel` (fed by
//! `backward`'s sync hook) and the functional `value_and_grad` (fed by the pullback's ready
//! reports): leaves are marked ready as their gradients become final, buckets start strictly in
//! plan order once all their leaves are ready, and the results come back in the same order.

use std::collections::VecDeque;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use nabla_core::{Device, Tensor};

use crate::bucket::{Bucket, BucketPlan};
use crate::error::{DistError, Result};
use crate::pack::{host_vec_tensor, pack, pack_tensor, to_host_vec, unpack};
use crate::worker::{Reduced, Worker};

/// A started bucket's all-reduce.
enum InFlight {
    /// On the communication thread, over the host transport; the reduced bucket goes to
    /// `device` (where its leaves live).
    Host(Receiver<Reduced>, Device),
    /// Queued on the device by its transport (the sum, or the call's error), and the time the
    /// call took to queue.
    Device(Result<Tensor>, Duration),
}

/// Which leaves are ready and which buckets have started, for one sync.
pub(crate) struct BucketQueue {
    /// The buckets, in launch order.
    pub plan: BucketPlan,
    numels: Vec<usize>,
    devices: Vec<Device>,
    ready: Vec<bool>,
    bucket_ready: Vec<usize>,
    next_launch: usize,
    in_flight: VecDeque<(usize, InFlight)>,
    /// Bytes this rank contributed since the last reset.
    pub bytes: usize,
}

impl BucketQueue {
    /// A queue for `plan` over `leaves` (their sizes and devices).
    pub fn new(plan: BucketPlan, leaves: &[Tensor]) -> BucketQueue {
        BucketQueue {
            ready: vec![false; leaves.len()],
            bucket_ready: vec![0; plan.buckets.len()],
            plan,
            numels: leaves.iter().map(Tensor::numel).collect(),
            devices: leaves.iter().map(Tensor::device).collect(),
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

    /// The one device of all the bucket's leaves, or `None` when they are spread over several.
    fn device_of(&self, bucket: &Bucket) -> Option<Device> {
        let first = self.devices[bucket.leaves[0]];
        bucket.leaves.iter().all(|&l| self.devices[l] == first).then_some(first)
    }

    /// Starts, in plan order, every bucket whose leaves are all ready: packs `grad(leaf)` (zeros
    /// where `None`) times `weight` and queues it: on the device transport of the leaves' device
    /// when the worker's group has one, else on the worker's thread over the host transport
    /// (leaves on a device are packed there and copied to the host in one piece).
    pub fn launch_ready(&mut self, worker: &Worker, weight: f64, grad: impl Fn(usize) -> Option<Tensor>) {
        while self.next_launch < self.plan.buckets.len() {
            let b = self.next_launch;
            let bucket = &self.plan.buckets[b];
            if self.bucket_ready[b] < bucket.leaves.len() {
                break;
            }
            let grads: Vec<Option<Tensor>> = bucket.leaves.iter().map(|&l| grad(l)).collect();
            self.bytes += bucket.numel * bucket.dtype.size_in_bytes();
            let device = self.device_of(bucket);
            let started = match device {
                Some(d) if worker.group().device_communicator(d).is_some() => {
                    let packed = pack_tensor(bucket, &grads, &self.numels, weight, d);
                    let t0 = Instant::now();
                    let reduced = worker.group().device_all_reduce_sum(packed);
                    InFlight::Device(reduced, t0.elapsed())
                }
                Some(d) if d != Device::Cpu => {
                    let packed = pack_tensor(bucket, &grads, &self.numels, weight, d);
                    InFlight::Host(worker.submit(to_host_vec(&packed)), d)
                }
                _ => InFlight::Host(worker.submit(pack(bucket, &grads, &self.numels, weight)), Device::Cpu),
            };
            self.in_flight.push_back((b, started));
            self.next_launch += 1;
        }
    }

    /// Waits for every started bucket, in order, and hands each leaf's reduced gradient (shaped
    /// and placed like `leaves[leaf]`) to `deliver`. Returns the time the all-reduces took (for
    /// a device transport, the time to queue them).
    pub fn drain(
        &mut self,
        worker: &Worker,
        leaves: &[Tensor],
        mut deliver: impl FnMut(usize, Tensor),
    ) -> Result<Duration> {
        let mut comm = Duration::ZERO;
        while let Some((b, started)) = self.in_flight.pop_front() {
            let whole = match started {
                InFlight::Host(rx, device) => {
                    let reduced = rx
                        .recv()
                        .map_err(|_| DistError::Usage("the all-reduce thread ended without an answer".into()))?;
                    reduced.result?;
                    comm += reduced.took;
                    host_vec_tensor(reduced.data, device)
                }
                InFlight::Device(reduced, took) => {
                    let reduced = reduced?;
                    worker.group().device_finish(reduced.device())?;
                    comm += took;
                    reduced
                }
            };
            let bucket = &self.plan.buckets[b];
            let like: Vec<&Tensor> = bucket.leaves.iter().map(|&l| &leaves[l]).collect();
            for (k, g) in unpack(bucket, &whole, &like).into_iter().enumerate() {
                deliver(bucket.leaves[k], g);
            }
        }
        Ok(comm)
    }
}
