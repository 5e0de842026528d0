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

/// The map of a linear step in these tests: prefix sums along the last axis, which is not its
/// own transpose (the transpose sums suffixes), so a rule that swapped them would be caught.
/// It counts its calls, and acts on every row alike, so it may see a vmapped value whole.
fn prefix_sums(calls: &Arc<AtomicUsize>) -> nb::ops::external::LinearStepFn {
    let calls = calls.clone();
    Arc::new(move |t: &Tensor| {
        assert!(!t.is_traced() && !t.is_batched(), "the map gets plain values");
        calls.fetch_add(1, Ordering::Relaxed);
        t.cumsum(-1)
    })
}

fn suffix_sums() -> nb::ops::external::LinearStepFn {
    Arc::new(|t: &Tensor| t.flip(-1).cumsum(-1).flip(-1))
}

fn linear_step(x: &Tensor, calls: &Arc<AtomicUsize>) -> Tensor {
    x.apply_linear_step("prefix_sums", prefix_sums(calls), suffix_sums())
}

/// The matrix of prefix sums over `n` values: `M[i][j] = 1` for `j <= i`.
fn prefix_matrix(n: usize) -> Tensor {
    Tensor::ones(&[n, n], nb::DType::F64).tril(0)
}

fn close(a: &Tensor, b: &Tensor) -> bool {
    a.shape() == b.shape()
        && a.to_vec::<f64>()
            .iter()
            .zip(b.to_vec::<f64>())
            .all(|(x, y)| (x - y).abs() < 1e-12)
}

#[test]
fn a_linear_step_is_differentiated_with_its_map_and_its_transpose() {
    let calls = Arc::new(AtomicUsize::new(0));
    let x = Tensor::from_vec(vec![0.5f64, -1.0, 2.0, 0.25], &[4]);
    let m = prefix_matrix(4);
    let y = linear_step(&x, &calls);
    assert!(close(&y, &m.matmul(&x)), "value {:?}", y.to_vec::<f64>());
    // Reverse mode: the gradient of w . M x is M^T w.
    let w = Tensor::from_vec(vec![1.0f64, -2.0, 0.5, 3.0], &[4]);
    let g = nb::grad(|x: &Tensor| (linear_step(x, &calls) * &w).sum_all())(&x);
    assert!(close(&g, &m.transpose().matmul(&w)), "grad {:?}", g.to_vec::<f64>());
    // Forward mode: the tangent is M t.
    let t = Tensor::from_vec(vec![1.0f64, 0.0, -1.0, 2.0], &[4]);
    let (_, tangent) = nb::jvp(|x: &Tensor| linear_step(x, &calls), &x, &t);
    assert!(close(&tangent, &m.matmul(&t)), "jvp {:?}", tangent.to_vec::<f64>());
    // Both Jacobians are M.
    let jf = nb::jacfwd(|x: &Tensor| linear_step(x, &calls))(&x);
    let jr = nb::jacrev(|x: &Tensor| linear_step(x, &calls))(&x);
    assert!(close(&jf, &m) && close(&jr, &m), "jacfwd {jf:?} jacrev {jr:?}");
    // Second order, both ways: the Hessian of |M x|^2 is 2 M^T M.
    let f = |x: &Tensor| linear_step(x, &calls).square().sum_all();
    let want = m.transpose().matmul(&m) * 2.0;
    assert!(close(&nb::hessian(f)(&x), &want), "hessian");
    assert!(close(&nb::jacrev(nb::grad(f))(&x), &want), "jacrev of grad");
}

#[test]
fn a_linear_step_under_vmap_maps_every_row_and_under_jit_runs_on_every_replay() {
    let calls = Arc::new(AtomicUsize::new(0));
    let xs = Tensor::from_vec((0..12).map(|v| v as f64 * 0.5 - 2.0).collect(), &[3, 4]);
    let w = Tensor::from_vec(vec![1.0f64, -2.0, 0.5, 3.0], &[4]);
    let per_row = nb::vmap(nb::grad(|x: &Tensor| (linear_step(x, &calls) * &w).sum_all()))(&xs);
    let want = m_t_w(&w).broadcast_to(&[3, 4]);
    assert!(close(&per_row, &want), "vmap of grad {:?}", per_row.to_vec::<f64>());
    let ys = nb::vmap(|x: &Tensor| linear_step(x, &calls))(&xs);
    assert!(close(&ys, &xs.cumsum(-1)), "vmap {:?}", ys.to_vec::<f64>());

    let before = calls.load(Ordering::Relaxed);
    let step = Jit::new(|x: &Tensor| nb::grad(|x: &Tensor| linear_step(x, &calls).square().sum_all())(x));
    let m = prefix_matrix(4);
    for k in 0..3 {
        let x = Tensor::from_vec(vec![k as f64, 1.0, -0.5, 2.0], &[4]);
        let want = m.transpose().matmul(&m.matmul(&x)) * 2.0;
        assert!(close(&step.call(&x), &want), "call {k}");
    }
    assert_eq!(step.cache_info().replays, 2);
    assert_eq!(
        calls.load(Ordering::Relaxed) - before,
        1,
        "recorded once, then replayed as kernels"
    );
}

fn m_t_w(w: &Tensor) -> Tensor {
    prefix_matrix(4).transpose().matmul(w)
}

#[test]
fn a_linear_step_that_changes_the_shape_is_refused_by_name() {
    let x = Tensor::from_vec(vec![1.0f64, 2.0], &[2]);
    let msg = panic_message(|| {
        x.apply_linear_step("shrink", Arc::new(|t: &Tensor| t.sum_all()), suffix_sums());
    });
    assert!(
        msg.contains("shrink") && msg.contains("[]") && msg.contains("[2]"),
        "{msg}"
    );
}
