//! Steps outside the backend's kernels (`apply_external` on host values, `apply_device_step`
//! where the tensor lives): they give `f`'s values, and under `jit` each is one recorded step
//! that runs again on every replay with the new values (never a constant, never its inner
//! kernels recorded one by one), so collectives built on them repeat on every call.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::panic_message;
use nabla_core as nb;
use nb::storage::CpuBuffer;
use nb::{Jit, Tensor};

fn counted_device_step(calls: &Arc<AtomicUsize>) -> nb::ops::external::DeviceStepFn {
    let calls = calls.clone();
    Arc::new(move |t: Tensor| {
        calls.fetch_add(1, Ordering::Relaxed);
        // Reading values inside the step must not stop the program from being replayed.
        assert!(t.to_vec::<f64>().iter().all(|v| v.is_finite()));
        &t * 2.0 + 1.0
    })
}

#[test]
fn a_device_step_runs_once_per_call_and_replays_on_new_values() {
    let calls = Arc::new(AtomicUsize::new(0));
    let step = counted_device_step(&calls);
    let jitted = Jit::new(|x: &Tensor| (x * 3.0).apply_device_step("double", step.clone()).exp());
    for k in 0..4 {
        let x = Tensor::from_vec(vec![0.1 * k as f64, -0.2, 0.3], &[3]);
        let want: Vec<f64> = x.to_vec::<f64>().iter().map(|v| (6.0 * v + 1.0).exp()).collect();
        assert_eq!(jitted.call(&x).to_vec::<f64>(), want, "call {k}");
        assert_eq!(
            calls.load(Ordering::Relaxed),
            k + 1,
            "call {k}: the step runs once per call"
        );
    }
    let info = jitted.cache_info();
    assert_eq!((info.compiled, info.replays), (1, 3), "{info:?}");
    assert!(info.eager.is_empty(), "{info:?}");
}

#[test]
fn an_external_host_step_replays_on_new_values() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let negate: nb::ops::external::ExternalFn = Arc::new(move |buf: CpuBuffer| {
        counted.fetch_add(1, Ordering::Relaxed);
        let CpuBuffer::F32(v) = buf else { panic!("f32 expected") };
        CpuBuffer::F32(Arc::new(v.iter().map(|x| -x).collect()))
    });
    let jitted = Jit::new(|x: &Tensor| (x + 1.0).apply_external("negate", negate.clone()));
    for k in 0..3 {
        let x = Tensor::from_vec(vec![k as f32, 2.0], &[2]);
        assert_eq!(
            jitted.call(&x).to_vec::<f32>(),
            vec![-(k as f32) - 1.0, -3.0],
            "call {k}"
        );
    }
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    assert_eq!(jitted.cache_info().replays, 2);
}

#[test]
fn a_device_step_that_changes_the_shape_is_refused_by_name() {
    let x = Tensor::from_vec(vec![1.0f64, 2.0], &[2]);
    let msg = panic_message(|| {
        x.apply_device_step("shrink", Arc::new(|t: Tensor| t.sum_all()));
    });
    assert!(
        msg.contains("shrink") && msg.contains("[]") && msg.contains("[2]"),
        "{msg}"
    );
}

#[test]
fn steps_refuse_traced_values() {
    let msg = panic_message(|| {
        nb::grad(|x: &Tensor| x.apply_device_step("sync", Arc::new(|t: Tensor| t)).sum_all())(&Tensor::from_vec(
            vec![1.0f64],
            &[1],
        ));
    });
    assert!(msg.contains("sync") && msg.contains("no derivative rule"), "{msg}");
}

#[test]
fn a_step_on_a_captured_constant_is_never_folded_into_the_recording() {
    // A collective on a captured tensor (no input reaches it) must still run on every call:
    // every rank must make the same calls, and other ranks' values change between calls.
    let calls = Arc::new(AtomicUsize::new(0));
    let step = counted_device_step(&calls);
    let captured = Tensor::from_vec(vec![1.0f64, 2.0], &[2]);
    let jitted = Jit::new(|x: &Tensor| x + captured.apply_device_step("sync", step.clone()));
    for k in 0..3 {
        let x = Tensor::from_vec(vec![k as f64, 0.0], &[2]);
        assert_eq!(jitted.call(&x).to_vec::<f64>(), vec![k as f64 + 3.0, 5.0], "call {k}");
    }
    assert_eq!(calls.load(Ordering::Relaxed), 3, "the step ran once per call");
    assert_eq!(jitted.cache_info().replays, 2);
}
