//! The host's share of a GPU training step, measured without a GPU: the CUDA backend runs over
//! a `DeviceApi` whose launches, GEMMs and copies do nothing, so the time left is what the host
//! spends per step (tracing, planning each kernel, binding its arguments, sizing the launch).
//! A GPU step cannot be faster than this, and at small batches (`mlp_step` at 128) it is what
//! decides whether we keep up with PyTorch eager, whose host cost is a few microseconds per op.
//!
//! `cargo run --release -p nabla-cuda --example host_overhead`

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use common::mlp_loss;
use nabla_core as nb;
use nabla_cuda::{ApiError, CudaBackend, DeviceApi, GemmCall, HostRead, LaunchArg};
use nabla_kernels::KernelSpec;
use nabla_kernels::launch::LaunchDims;
use nb::{DType, Device, Rng, Tensor};

/// Device memory that holds nothing.
#[derive(Debug)]
struct NoMem;

/// A GPU that does no work and counts what it was asked.
struct NullGpu {
    launches: AtomicUsize,
    gemms: AtomicUsize,
}

impl DeviceApi for NullGpu {
    type Mem = NoMem;

    fn ordinal(&self) -> usize {
        0
    }
    fn sm_count(&self) -> u32 {
        132
    }
    fn alloc(&self, _bytes: usize) -> Result<NoMem, ApiError> {
        Ok(NoMem)
    }
    fn alloc_zeroed(&self, _bytes: usize) -> Result<NoMem, ApiError> {
        Ok(NoMem)
    }
    fn upload(&self, _bytes: &[u8]) -> Result<NoMem, ApiError> {
        Ok(NoMem)
    }
    fn download_many(&self, reads: &[HostRead<'_, NoMem>]) -> Result<Vec<Vec<u8>>, ApiError> {
        Ok(reads.iter().map(|r| vec![0; r.len]).collect())
    }
    fn zero(&self, _mem: &NoMem) -> Result<(), ApiError> {
        Ok(())
    }
    fn launch(&self, _spec: &KernelSpec, _dims: LaunchDims, _args: &[LaunchArg<'_, NoMem>]) -> Result<(), ApiError> {
        self.launches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn gemm(&self, _call: &GemmCall<'_, NoMem>) -> Result<(), ApiError> {
        self.gemms.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
    fn synchronize(&self) -> Result<(), ApiError> {
        Ok(())
    }
}

fn main() {
    let gpu = Arc::new(NullGpu {
        launches: AtomicUsize::new(0),
        gemms: AtomicUsize::new(0),
    });
    let backend = Arc::new(CudaBackend::new(gpu.clone()).expect("backend"));
    nb::register_backend(Device::Cuda(0), backend);
    let dev = Device::Cuda(0);
    let mut rng = Rng::new(0);
    let mut layer = |i: usize, o: usize| {
        (
            rng.normal(&[i, o], 0.0, 0.05, DType::F32).to_device(dev).unwrap(),
            Tensor::zeros(&[o], DType::F32).to_device(dev).unwrap(),
        )
    };
    let params = [layer(784, 512), layer(512, 512), layer(512, 10)];
    let x = Rng::new(1)
        .normal(&[128, 784], 0.0, 1.0, DType::F32)
        .to_device(dev)
        .unwrap();
    let labels = Tensor::from_vec((0..128).map(|i| (i * 7 % 10) as i64).collect(), &[128]);
    let y = nb::one_hot(&labels, 10, DType::F32).to_device(dev).unwrap();
    let vg = nb::value_and_grad(|p: &[(Tensor, Tensor); 3]| mlp_loss(p, &x, &y));
    let vg_jit = nb::jit(&vg);

    println!("| mlp_step b128 (784-512-512-10) | host µs / step | kernels + GEMMs / step | host µs / launch |");
    println!("|---|---|---|---|");
    for (name, step) in [
        (
            "eager",
            &vg as &dyn Fn(&[(Tensor, Tensor); 3]) -> (Tensor, [(Tensor, Tensor); 3]),
        ),
        ("jit replay", &vg_jit),
    ] {
        for _ in 0..20 {
            drop(step(&params));
        }
        let steps = 2000;
        let (l0, g0) = (gpu.launches.load(Ordering::Relaxed), gpu.gemms.load(Ordering::Relaxed));
        let t = Instant::now();
        for _ in 0..steps {
            drop(step(&params));
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / steps as f64;
        let launches =
            (gpu.launches.load(Ordering::Relaxed) - l0 + gpu.gemms.load(Ordering::Relaxed) - g0) as f64 / steps as f64;
        println!("| {name} | {us:.1} | {launches:.0} | {:.2} |", us / launches);
    }
}
