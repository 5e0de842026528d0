//! The device-transport path of the gradient sync (what NCCL plugs into), run on the CPU: a
//! transport for `Device::Cpu` that stages through a host group stands in for NCCL, so buckets
//! are packed with tensor ops, handed to the transport whole and cut back into leaves exactly
//! as they are for GPU tensors. The results must equal the host path's bit for bit.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{batch, loss, on_ranks, params, rows};
use nabla_core::storage::{CpuBuffer, IntoCpuBuffer, Storage};
use nabla_core::{DType, Device, Element, Tensor};
use nabla_dist::{
    CommResult, DataParallel, DataParallelConfig, DeviceCommunicator, DevicePoll, HostBufMut, ProcessGroup, Shard,
    all_reduce_weighted,
};

/// A device transport for CPU tensors that sums through a host group, counting its calls and
/// checking what it is handed.
struct Staged {
    host: ProcessGroup,
    reduces: AtomicUsize,
    broadcasts: AtomicUsize,
    joins: AtomicUsize,
    fail_with: Option<String>,
}

impl Staged {
    fn on(group: &ProcessGroup, fail_with: Option<String>) -> Arc<Staged> {
        Arc::new(Staged {
            host: group.duplicate("staged").unwrap(),
            reduces: AtomicUsize::new(0),
            broadcasts: AtomicUsize::new(0),
            joins: AtomicUsize::new(0),
            fail_with,
        })
    }

    fn sum(&self, t: Tensor, broadcast_root: Option<usize>) -> CommResult<Tensor> {
        assert!(t.layout().is_contiguous() && t.rank() == 1 || broadcast_root.is_some());
        assert!(!t.is_traced(), "a bucket must be a plain value");
        if let Some(why) = &self.fail_with {
            return Err(why.clone());
        }
        let shape = t.shape().to_vec();
        match t.to_host_buffer() {
            CpuBuffer::F32(v) => {
                self.collective(Arc::unwrap_or_clone(v), |s| HostBufMut::F32(s), broadcast_root, &shape)
            }
            CpuBuffer::F64(v) => {
                self.collective(Arc::unwrap_or_clone(v), |s| HostBufMut::F64(s), broadcast_root, &shape)
            }
            other => Err(format!("staged: {} is not handled", other.dtype())),
        }
    }

    /// `v` broadcast from `root` (or summed when `None`) over the host group, as a tensor.
    fn collective<T: Element>(
        &self,
        mut v: Vec<T>,
        as_buf: impl for<'a> Fn(&'a mut [T]) -> HostBufMut<'a>,
        root: Option<usize>,
        shape: &[usize],
    ) -> CommResult<Tensor>
    where
        Vec<T>: IntoCpuBuffer,
    {
        match root {
            Some(root) => self.host.broadcast(as_buf(&mut v), root),
            None => self.host.all_reduce_sum(as_buf(&mut v)),
        }
        .map_err(|e| e.to_string())?;
        Ok(Tensor::from_vec(v, shape))
    }
}

impl DeviceCommunicator for Staged {
    fn name(&self) -> &'static str {
        "staged"
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn all_reduce_sum(&self, bucket: Tensor) -> CommResult<Tensor> {
        self.reduces.fetch_add(1, Ordering::Relaxed);
        // NCCL sums in place, so (as NcclComm does) refuse a bucket whose buffer another
        // tensor, or a jit tape, also holds.
        let sole = match bucket.raw().storage() {
            Storage::Cpu(CpuBuffer::F32(v)) => Arc::strong_count(v) == 1,
            Storage::Cpu(CpuBuffer::F64(v)) => Arc::strong_count(v) == 1,
            _ => false,
        };
        assert!(sole, "staged: the bucket's buffer is shared; NCCL would refuse it");
        self.sum(bucket, None)
    }
    fn join(&self) -> CommResult<()> {
        self.joins.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn completion(&self) -> Option<DevicePoll> {
        // Staged calls have run when they return; the watchdog sees them done at its first look.
        Some(Box::new(|| Ok(true)))
    }
    fn broadcast(&self, t: Tensor, root: usize) -> CommResult<Tensor> {
        self.broadcasts.fetch_add(1, Ordering::Relaxed);
        let shape = t.shape().to_vec();
        let dtype = t.dtype();
        let wide = if dtype == DType::F64 { t } else { t.cast(DType::F32) };
        Ok(self.sum(wide, Some(root))?.cast(dtype).reshape(shape.as_slice()))
    }
}

/// Leaves of four dtypes (one bucket of f64, the rest summed in f32) and one the loss never
/// uses.
fn mixed_params(seed: u64) -> Vec<Tensor> {
    let p = params(seed);
    vec![
        p[0].clone(),
        p[1].cast(DType::F32),
        p[2].cast(DType::BF16),
        Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[3]).cast(DType::F16),
    ]
}

fn mixed_loss(p: &[Tensor], x: &Tensor, y: &Tensor) -> Tensor {
    let q = vec![p[0].clone(), p[1].cast(DType::F64), p[2].cast(DType::F64)];
    loss(&q, x, y)
}

/// What one rank saw of a step: the gradients' bits, the bucket count and the transport's
/// (reduces, broadcasts, joins).
type RankStep = (Vec<Vec<u8>>, usize, (usize, usize, usize));

/// One DataParallel step on `world` ranks, with or without the staged transport.
fn dp_step(world: usize, transport: bool, config: DataParallelConfig) -> Vec<RankStep> {
    let global = 9;
    let (x, y) = batch(global, 5);
    on_ranks(world, |group| {
        let staged = transport.then(|| Staged::on(&group, None));
        let group = match &staged {
            Some(s) => group.with_device_communicator(s.clone()),
            None => group,
        };
        let (dp, p) = DataParallel::with_config(&group, &mixed_params(group.rank() as u64), config).unwrap();
        let shard = Shard::of(global, group.rank(), world);
        dp.set_shard_sizes(shard.len, shard.global);
        let tracked = dp.track(&p);
        mixed_loss(&tracked, &rows(&x, shard.range()), &rows(&y, shard.range())).backward();
        let grads = dp.grads(&tracked);
        let bits = grads.iter().map(|g| g.to_host_buffer().to_le_bytes()).collect();
        let counts = staged
            .map(|s| {
                let n = |c: &AtomicUsize| c.load(Ordering::Relaxed);
                (n(&s.reduces), n(&s.broadcasts), n(&s.joins))
            })
            .unwrap_or_default();
        (bits, dp.last_sync().buckets, counts)
    })
}

#[test]
fn data_parallel_through_a_device_transport_equals_the_host_path_bit_for_bit() {
    for config in [
        DataParallelConfig::default(),
        // Every leaf its own bucket, started during the sweep.
        DataParallelConfig {
            first_bucket_bytes: 8,
            bucket_bytes: 8,
            overlap: true,
        },
    ] {
        let host = dp_step(3, false, config);
        let device = dp_step(3, true, config);
        for (rank, (h, d)) in host.iter().zip(&device).enumerate() {
            assert_eq!(h.0, d.0, "rank {rank}: the gradients differ ({config:?})");
            assert_eq!(h.1, d.1, "rank {rank}: bucket counts differ");
            // Every bucket went through the transport, and every leaf's starting value; each
            // bucket was joined before it was unpacked.
            assert_eq!(
                d.2,
                (d.1, 4, d.1),
                "rank {rank}: (reduces, broadcasts, joins) vs buckets {}",
                d.1
            );
        }
        assert!(device.iter().all(|d| d.0 == device[0].0), "ranks disagree");
    }
}

#[test]
fn functional_all_reduce_uses_the_transport_eagerly_and_in_every_jit_replay() {
    let results = on_ranks(2, |group| {
        let staged = Staged::on(&group, None);
        let with = group.clone().with_device_communicator(staged.clone());
        let grads = mixed_params(7 + group.rank() as u64);
        let later = mixed_params(70 + group.rank() as u64);
        let host = all_reduce_weighted(&group, &grads, 0.25).unwrap();
        let host_later = all_reduce_weighted(&group, &later, 0.25).unwrap();
        let eager = all_reduce_weighted(&with, &grads, 0.25).unwrap();
        let eager_calls = staged.reduces.load(Ordering::Relaxed);
        let jitted = nabla_core::Jit::new(|g: &Vec<Tensor>| all_reduce_weighted(&with, g, 0.25).unwrap());
        let (first, second, third) = (jitted.call(&grads), jitted.call(&grads), jitted.call(&later));
        assert_eq!(jitted.cache_info().replays, 2, "{:?}", jitted.cache_info());
        let bits = |v: &Vec<Tensor>| v.iter().map(|t| t.to_host_buffer().to_le_bytes()).collect::<Vec<_>>();
        assert_eq!(bits(&host), bits(&eager));
        assert_eq!(bits(&host), bits(&first));
        assert_eq!(bits(&host), bits(&second));
        assert_eq!(bits(&host_later), bits(&third));
        assert_ne!(bits(&host), bits(&host_later));
        // Each leaf keeps its dtype; halves are summed in f32 and rounded once: here the sum
        // over both ranks' leaves times 0.25, computed in f64 from the f32-widened values.
        let mine: Vec<Tensor> = grads.clone();
        let theirs = mixed_params(7 + (1 - group.rank()) as u64);
        for (k, leaf) in host.iter().enumerate() {
            assert_eq!(leaf.dtype(), grads[k].dtype(), "leaf {k}");
            let wide = |t: &Tensor| t.cast(bucket_dtype(t.dtype())).cast(DType::F64);
            let want = ((wide(&mine[k]) + wide(&theirs[k])) * 0.25)
                .cast(bucket_dtype(grads[k].dtype()))
                .cast(grads[k].dtype());
            assert_eq!(
                leaf.to_host_buffer().to_le_bytes(),
                want.to_host_buffer().to_le_bytes(),
                "leaf {k}"
            );
        }
        (eager_calls, staged.reduces.load(Ordering::Relaxed))
    });
    for (rank, (eager_calls, all_calls)) in results.into_iter().enumerate() {
        // Two buckets (f64 and f32) per call: once eagerly, then at the recording and at each
        // of the two replays.
        assert_eq!((eager_calls, all_calls), (2, 8), "rank {rank}");
    }
}

#[test]
fn a_failing_device_transport_is_an_error_naming_the_rank_and_the_call() {
    let errors = on_ranks(2, |group| {
        let failing = Staged::on(&group, Some("NCCL: peer vanished".into()));
        let with = group.with_device_communicator(failing);
        all_reduce_weighted(&with, &mixed_params(1), 0.5)
            .unwrap_err()
            .to_string()
    });
    for (rank, e) in errors.iter().enumerate() {
        assert!(e.contains(&format!("rank {rank} of 2")), "{e}");
        assert!(e.contains("all_reduce_sum") && e.contains("NCCL: peer vanished"), "{e}");
    }
}

#[test]
fn a_group_shows_its_device_transport_and_only_for_its_device() {
    let group = ProcessGroup::single();
    let with = group.clone().with_device_communicator(Staged::on(&group, None));
    assert!(with.device_communicator(Device::Cpu).is_some());
    assert!(with.device_communicator(Device::Cuda(0)).is_none());
    assert!(format!("{with:?}").contains("+ staged on cpu"), "{with:?}");
    assert!(group.device_communicator(Device::Cpu).is_none());
}

/// The dtype a leaf's gradient is summed in (f64 stays, other floats travel as f32).
fn bucket_dtype(leaf: DType) -> DType {
    if leaf == DType::F64 { DType::F64 } else { DType::F32 }
}
