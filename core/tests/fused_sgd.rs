//! The fused SGD update against the formula written in tensor ops: bit for bit in f32 and f64
//! (with and without momentum, Nesterov and weight decay, both sides of the thread split,
//! strided operands), within the precision of halves, under `jit` (one recorded step replayed
//! on new values), through `grad` (traced operands take the differentiable formula), and the
//! messages for mismatched operands.

use nabla_core as nb;
use nb::{DType, SgdStep, Tensor};

/// Values in `[-2, 2)` from a fixed integer hash.
fn values(n: usize, seed: u64) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ (seed << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(23);
            (h % 4000) as f64 / 1000.0 - 2.0
        })
        .collect()
}

/// Every configuration: (momentum, nesterov, weight decay).
const CONFIGS: [(f64, bool, f64); 5] = [
    (0.0, false, 0.0),
    (0.0, false, 1e-3),
    (0.9, false, 0.0),
    (0.9, false, 5e-4),
    (0.9, true, 5e-4),
];

fn step((momentum, nesterov, weight_decay): (f64, bool, f64)) -> SgdStep {
    SgdStep {
        lr: 0.05,
        momentum,
        nesterov,
        weight_decay,
    }
}

/// The update written with tensor ops, one rounding per op in the kernel's order.
fn reference(p: &Tensor, g: &Tensor, v: Option<&Tensor>, s: &SgdStep) -> (Tensor, Option<Tensor>) {
    let g = if s.weight_decay != 0.0 {
        g + p * s.weight_decay
    } else {
        g.clone()
    };
    match v {
        None => (p - &g * s.lr, None),
        Some(v) => {
            let v1 = v * s.momentum + &g;
            let d = if s.nesterov { &g + &v1 * s.momentum } else { v1.clone() };
            (p - d * s.lr, Some(v1))
        }
    }
}

/// Parameter, gradient and velocity of `shape` in `dtype`.
fn operands(shape: &[usize], dtype: DType, seed: u64) -> [Tensor; 3] {
    let n = shape.iter().product();
    let t = |k: u64| Tensor::from_vec(values(n, seed + k), shape).cast(dtype);
    [t(0), t(1), t(2)]
}

fn bits(t: &Tensor) -> Vec<u8> {
    t.to_host_buffer().to_le_bytes()
}

#[test]
fn the_fused_update_is_the_formula_bit_for_bit() {
    for dtype in [DType::F32, DType::F64] {
        for shape in [&[7usize][..], &[3, 5], &[400, 250]] {
            for config in CONFIGS {
                let s = step(config);
                let [p, g, v] = operands(shape, dtype, 11);
                let v = (s.momentum != 0.0).then_some(v);
                let (q, v1) = nb::sgd_update(&p, &g, v.as_ref(), &s);
                let (want_q, want_v) = reference(&p, &g, v.as_ref(), &s);
                let what = format!("{dtype} {shape:?} {config:?}");
                assert_eq!((q.shape(), q.dtype()), (shape, dtype), "{what}");
                assert_eq!(bits(&q), bits(&want_q), "{what}: param");
                assert_eq!(v1.is_some(), want_v.is_some(), "{what}");
                if let (Some(a), Some(b)) = (&v1, &want_v) {
                    assert_eq!(bits(a), bits(b), "{what}: velocity");
                }
            }
        }
    }
}

#[test]
fn strided_operands_update_like_their_copies_and_halves_round_once() {
    let s = step(CONFIGS[4]);
    let [p, g, v] = operands(&[6, 4], DType::F32, 5);
    let [pt, gt, vt] = [&p, &g, &v].map(|t| t.transpose());
    let dense = [&pt, &gt, &vt].map(|t| t + 0.0);
    let (a, b) = nb::sgd_update(&pt, &gt, Some(&vt), &s);
    let (x, y) = nb::sgd_update(&dense[0], &dense[1], Some(&dense[2]), &s);
    assert_eq!([bits(&a), bits(&b.unwrap())], [bits(&x), bits(&y.unwrap())]);
    for dtype in [DType::BF16, DType::F16] {
        let [p, g, v] = operands(&[50], dtype, 2);
        let (q, v1) = nb::sgd_update(&p, &g, Some(&v), &s);
        let wide = [&p, &g, &v].map(|t| t.cast(DType::F64));
        let (want_q, want_v) = reference(&wide[0], &wide[1], Some(&wide[2]), &s);
        let rel = if dtype == DType::BF16 { 8e-3 } else { 1e-3 };
        for (got, want) in [(&q, &want_q), (&v1.unwrap(), &want_v.unwrap())] {
            assert_eq!(got.dtype(), dtype);
            for (a, b) in got.to_vec::<f64>().iter().zip(want.to_vec::<f64>()) {
                assert!((a - b).abs() <= rel * b.abs() + 1e-2 * rel, "{dtype}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn under_jit_the_update_is_one_step_replayed_on_new_values() {
    let s = step(CONFIGS[4]);
    let f = nb::Jit::new(move |xs: &Vec<Tensor>| {
        let (q, v1) = nb::sgd_update(&xs[0], &xs[1], Some(&xs[2]), &s);
        vec![q, v1.unwrap()]
    });
    for seed in [1u64, 2, 3] {
        let xs = operands(&[5, 3], DType::F32, seed).to_vec();
        let got = f.call(&xs);
        let (q, v1) = reference(&xs[0], &xs[1], Some(&xs[2]), &s);
        assert_eq!(bits(&got[0]), bits(&q), "call {seed}: param");
        assert_eq!(bits(&got[1]), bits(&v1.unwrap()), "call {seed}: velocity");
    }
    let info = f.cache_info();
    assert_eq!((info.compiled, info.replays), (1, 2), "{:?}", info.eager);
}

#[test]
fn traced_operands_take_the_formula_and_have_derivatives() {
    let s = step(CONFIGS[4]);
    let [p, g, v] = operands(&[4], DType::F64, 9);
    // d(sum of the new parameter) / d(parameter) = 1 - lr wd (1 + mu) with Nesterov.
    let d = nb::grad(|p: &Tensor| nb::sgd_update(p, &g, Some(&v), &s).0.sum_all())(&p).to_vec::<f64>();
    let (mu, wd, lr) = (s.momentum, s.weight_decay, s.lr);
    let want = 1.0 - lr * wd * (1.0 + mu);
    for (i, d) in d.iter().enumerate() {
        assert!((d - want).abs() <= 1e-12, "element {i}: {d} vs {want}");
    }
    // The traced value is the fused one.
    let (q, _) = nb::sgd_update(&p, &g, Some(&v), &s);
    let traced = nb::vjp(|p: &Tensor| nb::sgd_update(p, &g, Some(&v), &s).0, &p).0;
    assert_eq!(bits(&traced), bits(&q));
}

#[test]
fn mismatched_operands_are_refused_by_name() {
    let message = |f: &dyn Fn()| {
        let e = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_err();
        e.downcast::<String>().map(|s| *s).unwrap_or_default()
    };
    let [p, g, v] = operands(&[4], DType::F32, 1);
    let short = Tensor::zeros(&[3], DType::F32);
    let e = message(&|| drop(nb::sgd_update(&p, &g, Some(&short), &step(CONFIGS[2]))));
    assert!(
        e.contains("sgd_update: velocity is [3] f32 but the parameter is [4] f32"),
        "{e}"
    );
    let e = message(&|| drop(nb::sgd_update(&p, &g, None, &step(CONFIGS[2]))));
    assert!(e.contains("momentum 0.9 needs a velocity"), "{e}");
    let e = message(&|| drop(nb::sgd_update(&p, &g, Some(&v), &step(CONFIGS[0]))));
    assert!(e.contains("momentum 0 does not use a velocity"), "{e}");
}
