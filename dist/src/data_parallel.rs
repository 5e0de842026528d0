//! `DataParallel`: PyTorch-DDP-style gradient sync inside `backward`. The wrapper hands the
//! model's parameters out as `requires_grad` leaves registered with its hook; while `backward`
//! sweeps, each leaf whose gradient is final is marked ready, and a bucket whose leaves are all
//! ready is packed (pre-scaled) and all-reduced on the wrapper's communication thread while the
//! sweep goes on. At the end of `backward` the wrapper waits for the buckets and writes the
//! averaged gradients into `.grad`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use nabla_core::{DType, GradSyncHook, Tensor, Tree};

use crate::bucket::{BUCKET_BYTES, FIRST_BUCKET_BYTES, plan};
use crate::error::Result;
use crate::group::ProcessGroup;
use crate::queue::BucketQueue;
use crate::worker::Worker;

/// Settings of a [`DataParallel`].
#[derive(Clone, Copy, Debug)]
pub struct DataParallelConfig {
    /// Size of the first bucket of each dtype (default 1 MiB): small, so the first all-reduce
    /// starts early in the sweep.
    pub first_bucket_bytes: usize,
    /// Size of later buckets (default 25 MiB).
    pub bucket_bytes: usize,
    /// Start each bucket's all-reduce as soon as its leaves are ready (default). `false` starts
    /// them all when the sweep is over (for measuring what the overlap hides).
    pub overlap: bool,
}

impl Default for DataParallelConfig {
    fn default() -> Self {
        DataParallelConfig {
            first_bucket_bytes: FIRST_BUCKET_BYTES,
            bucket_bytes: BUCKET_BYTES,
            overlap: true,
        }
    }
}

/// What the last gradient sync did, for benchmarks and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SyncStats {
    /// Buckets all-reduced.
    pub buckets: usize,
    /// Bytes this rank contributed.
    pub bytes: usize,
    /// Buckets started before the sweep was over (overlapped with computation).
    pub started_during_sweep: usize,
    /// Seconds the all-reduce calls took on the communication thread. Through a device
    /// transport (NCCL) it is the host's time to queue them: the collectives then run on the
    /// device's communication stream, where a profiler (Nsight Systems) times them.
    pub comm_seconds: f64,
    /// Seconds `backward` waited for them after its sweep (communication not hidden).
    pub wait_seconds: f64,
}

const STALE_LEAF: &str = "backward reached a parameter leaf from an earlier DataParallel::track call; call track \
                          once per step and build the loss from the leaves it returned";

/// The per-step state of the sync.
struct State {
    queue: BucketQueue,
    /// (shape, dtype) of every leaf, fixed at creation.
    meta: Vec<(Vec<usize>, DType)>,
    /// The leaves handed out by the last `track`.
    leaves: Vec<Tensor>,
    index: HashMap<u64, usize>,
    /// A sync is under way (some leaf of this backward was reported).
    active: bool,
    checked: bool,
    weight: f64,
    stats: SyncStats,
}

struct Hook {
    group: ProcessGroup,
    config: DataParallelConfig,
    worker: Worker,
    no_sync: AtomicUsize,
    state: Mutex<State>,
}

/// Data-parallel training over a [`ProcessGroup`], in the manner of PyTorch's
/// `DistributedDataParallel`:
///
/// ```no_run
/// # use nabla_core::{Tensor, Tree};
/// # use nabla_dist::{DataParallel, ProcessGroup};
/// # fn loss(p: &Vec<Tensor>) -> Tensor { p[0].sum_all() }
/// let group = nabla_dist::init()?;
/// let params = vec![Tensor::from_vec(vec![1.0f32, 2.0], &[2])];
/// let (dp, mut params) = DataParallel::new(&group, &params)?; // rank 0's values everywhere
/// for _step in 0..10 {
///     let tracked = dp.track(&params);         // requires_grad leaves with the sync hook
///     loss(&tracked).backward();               // gradients all-reduced during the sweep
///     let grads = dp.grads(&tracked);          // averaged over the ranks
///     params = params.rebuild(params.leaves().iter().zip(grads.leaves()).map(|(p, g)| p - &(g * 0.1)).collect());
/// }
/// # Ok::<(), nabla_dist::DistError>(())
/// ```
///
/// Every leaf takes part in every sync (a leaf with no gradient contributes zeros), buckets
/// start in the same order on every rank, and the first sync checks that all ranks hold the
/// same leaves. The wrapper reduces on its own duplicate of the group, on its own thread, so
/// two wrappers (two models) never interleave their calls.
pub struct DataParallel {
    hook: Arc<Hook>,
}

/// While alive, `backward` accumulates gradients locally without a sync (gradient
/// accumulation); the first `backward` after it is dropped syncs the accumulated gradients.
#[must_use = "the guard disables sync only while it is alive"]
pub struct NoSync<'a> {
    dp: &'a DataParallel,
}

impl Drop for NoSync<'_> {
    fn drop(&mut self) {
        self.dp.hook.no_sync.fetch_sub(1, Ordering::SeqCst);
    }
}

impl DataParallel {
    /// A wrapper for the parameters `params` with the default settings; returns it with rank
    /// 0's parameter values (broadcast to every rank). Collective.
    pub fn new<P: Tree>(group: &ProcessGroup, params: &P) -> Result<(DataParallel, P)> {
        Self::with_config(group, params, DataParallelConfig::default())
    }

    /// [`DataParallel::new`] with settings.
    pub fn with_config<P: Tree>(
        group: &ProcessGroup,
        params: &P,
        config: DataParallelConfig,
    ) -> Result<(DataParallel, P)> {
        crate::check::float_leaves("DataParallel", &params.leaves())?;
        let params = group.broadcast_tree(params, 0)?;
        let group = group.duplicate("data-parallel")?;
        let leaves = params.leaves();
        let meta: Vec<(Vec<usize>, DType)> = leaves.iter().map(|t| (t.shape().to_vec(), t.dtype())).collect();
        let sizes: Vec<(DType, usize)> = leaves.iter().map(|t| (t.dtype(), t.numel())).collect();
        let plan = plan(&sizes, config.first_bucket_bytes, config.bucket_bytes);
        let state = State {
            queue: BucketQueue::new(plan, &leaves),
            meta,
            leaves: Vec::new(),
            index: HashMap::new(),
            active: false,
            checked: false,
            weight: 1.0 / group.world_size() as f64,
            stats: SyncStats::default(),
        };
        let hook = Arc::new(Hook {
            worker: Worker::start(group.clone()),
            group,
            config,
            no_sync: AtomicUsize::new(0),
            state: Mutex::new(state),
        });
        Ok((DataParallel { hook }, params))
    }

    /// `params` as fresh `requires_grad` leaves (same values) whose gradients this wrapper
    /// syncs during `backward`. Call it once per optimizer step, on the updated parameters;
    /// gradients accumulate on the leaves it returns. Panics when `params` does not have the
    /// leaves (count, shapes, dtypes) the wrapper was created with.
    pub fn track<P: Tree>(&self, params: &P) -> P {
        let hook: Arc<dyn GradSyncHook> = self.hook.clone();
        let mut guard = self.hook.lock();
        let st = &mut *guard;
        let leaves = params.leaves();
        let meta: Vec<(Vec<usize>, DType)> = leaves.iter().map(|t| (t.shape().to_vec(), t.dtype())).collect();
        if meta != st.meta {
            panic!(
                "DataParallel::track: these parameters ({} leaves) differ from the ones the wrapper was created with \
                 ({} leaves); first difference: {}",
                meta.len(),
                st.meta.len(),
                meta.iter()
                    .zip(&st.meta)
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                    .map(|(i, (a, b))| format!("leaf {i} is {:?} {} here, {:?} {} there", a.0, a.1, b.0, b.1))
                    .unwrap_or_else(|| "the count".into())
            );
        }
        if st.active {
            panic!("DataParallel::track: called during a backward's gradient sync");
        }
        let tracked: Vec<Tensor> = leaves
            .iter()
            .map(|t| t.stop_gradient().requires_grad_with_hook(hook.clone()))
            .collect();
        st.index = tracked
            .iter()
            .enumerate()
            .map(|(i, t)| (t.node_id().expect("leaf"), i))
            .collect();
        st.leaves = tracked.clone();
        st.reset();
        drop(guard);
        params.rebuild(tracked)
    }

    /// The gradients of the leaves `tracked` (from [`DataParallel::track`]) as a tree, zeros
    /// where a leaf has none.
    pub fn grads<P: Tree>(&self, tracked: &P) -> P {
        tracked.map_leaves(|t| t.grad().unwrap_or_else(|| t.zeros_like()))
    }

    /// Disables the sync while the guard lives (gradient accumulation over micro-batches).
    pub fn no_sync(&self) -> NoSync<'_> {
        self.hook.no_sync.fetch_add(1, Ordering::SeqCst);
        NoSync { dp: self }
    }

    /// Weights this rank's gradient by `local / global`: its share of the examples of the
    /// global batch, so that the sum over ranks is the gradient of the mean over the global
    /// batch even when shards are uneven (default: 1 / world size). Applies from the next sync.
    pub fn set_shard_sizes(&self, local: usize, global: usize) {
        if global == 0 || local > global {
            panic!("DataParallel::set_shard_sizes: local {local} of global {global} examples is not a share");
        }
        self.hook.lock().weight = local as f64 / global as f64;
    }

    /// What the last completed sync did.
    pub fn last_sync(&self) -> SyncStats {
        self.hook.lock().stats
    }

    /// The wrapper's process group (a duplicate of the one it was created with).
    pub fn group(&self) -> &ProcessGroup {
        &self.hook.group
    }
}

impl Drop for DataParallel {
    fn drop(&mut self) {
        // The tracked leaves hold the hook and the hook held them: drop them to break the cycle.
        let mut st = self.hook.lock();
        st.leaves.clear();
        st.index.clear();
    }
}

impl State {
    fn reset(&mut self) {
        self.queue.reset();
        self.active = false;
    }
}

impl Hook {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, when a `backward` callback has a sync to do: not inside `no_sync`, and the
    /// wrapper not dropped (a dropped wrapper released its leaves).
    fn syncing(&self) -> Option<MutexGuard<'_, State>> {
        if self.no_sync.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let st = self.lock();
        (!st.leaves.is_empty()).then_some(st)
    }

    /// During the sweep: starts the buckets that are ready, when overlapping.
    fn launch_during_sweep(&self, st: &mut State) {
        if self.config.overlap {
            self.launch_ready(st);
            st.stats.started_during_sweep = st.queue.launched();
        }
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!(
            "DataParallel (rank {} of {}): {what}",
            self.group.rank(),
            self.group.world_size()
        )
    }

    /// The first report of a backward: starts a sync, and checks the leaves across ranks at the
    /// very first one.
    fn begin(&self, st: &mut State) {
        if st.active {
            return;
        }
        st.active = true;
        st.stats = SyncStats::default();
        if !st.checked {
            if let Err(e) =
                crate::check::same_leaves_on_all_ranks(&self.group, &st.leaves, "DataParallel first backward")
            {
                self.fail(e);
            }
            st.checked = true;
        }
    }

    /// Starts, in order, every bucket whose leaves are all ready.
    fn launch_ready(&self, st: &mut State) {
        let leaves = &st.leaves;
        st.queue.launch_ready(&self.worker, st.weight, |l| leaves[l].grad());
    }
}

impl GradSyncHook for Hook {
    fn backward_begins(&self, reached: &[Tensor]) {
        let Some(mut st) = self.syncing() else { return };
        let st = &mut *st;
        let mut in_graph = vec![false; st.leaves.len()];
        for t in reached {
            match t.node_id().and_then(|id| st.index.get(&id)) {
                Some(&i) => in_graph[i] = true,
                None => self.fail(STALE_LEAF),
            }
        }
        self.begin(st);
        // Leaves this graph does not reach get nothing from the sweep: ready now (their
        // accumulated gradient or zeros), so their buckets do not hold back the ones after.
        for (i, reached) in in_graph.into_iter().enumerate() {
            if !reached {
                st.queue.mark_ready(i);
            }
        }
        self.launch_during_sweep(st);
    }

    fn grad_ready(&self, leaf: &Tensor) {
        let Some(mut st) = self.syncing() else { return };
        let st = &mut *st;
        let Some(&i) = leaf.node_id().and_then(|id| st.index.get(&id)) else {
            self.fail(STALE_LEAF)
        };
        self.begin(st);
        st.queue.mark_ready(i);
        self.launch_during_sweep(st);
    }

    fn backward_done(&self) {
        let Some(mut st) = self.syncing() else { return };
        let st = &mut *st;
        self.begin(st);
        // Leaves the sweep did not reach take part too: their accumulated gradient, or zeros.
        st.queue.mark_all_ready();
        self.launch_ready(st);
        let t0 = Instant::now();
        let leaves = st.leaves.clone();
        let comm = st
            .queue
            .drain(&self.worker, &leaves, |l, g| leaves[l].set_grad(Some(g)))
            .unwrap_or_else(|e| self.fail(e));
        st.stats.buckets = st.queue.launched();
        st.stats.bytes = st.queue.bytes;
        st.stats.wait_seconds = t0.elapsed().as_secs_f64();
        st.stats.comm_seconds = comm.as_secs_f64();
        st.reset();
    }
}
