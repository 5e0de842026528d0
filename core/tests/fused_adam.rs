//! The fused Adam update against the formula written in tensor ops: bit for bit in f32 and f64
//! (both weight-decay modes, both sides of the thread split, strided operands), within the
//! precision of halves, under `jit` (one recorded step, replayed on new values and new step
//! numbers), and through
//! `grad` (traced operands take the differentiable formula).

use nabla_core as nb;
use nb::{AdamStep, DType, Tensor};

/// Values in `[-2, 2)` from a fixed integer hash.
fn values(n: usize, seed: u64) -> Vec<f64> {
    (0..n as u64)
        .map(|i| {
            let h = (i ^ (seed << 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(23);
            (h % 4000) as f64 / 1000.0 - 2.0
        })
        .collect()
}

fn step(weight_decay: f64, decoupled: bool) -> AdamStep {
    AdamStep {
        lr: 1e-2,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
        decoupled,
    }
}

/// The step number of most tests.
const T: i64 = 3;

/// A step number as the update takes it.
fn count(t: i64) -> Tensor {
    Tensor::from_vec(vec![t], &[])
}

/// The update written with tensor ops at step `T`, one rounding per op in the kernel's order.
fn reference(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: &AdamStep) -> [Tensor; 3] {
    reference_at(p, g, m, v, s, T)
}

/// The update written with tensor ops at step `t`.
fn reference_at(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, s: &AdamStep, t: i64) -> [Tensor; 3] {
    let (bias1, bias2) = (1.0 - s.beta1.powf(t as f64), 1.0 - s.beta2.powf(t as f64));
    let g = if s.weight_decay != 0.0 && !s.decoupled {
        g + p * s.weight_decay
    } else {
        g.clone()
    };
    let m1 = m * s.beta1 + &g * (1.0 - s.beta1);
    let v1 = v * s.beta2 + &g * &g * (1.0 - s.beta2);
    let mut q = p - (&m1 / bias1) / ((&v1 / bias2).sqrt() + s.eps) * s.lr;
    if s.decoupled && s.weight_decay != 0.0 {
        q = q - p * (s.lr * s.weight_decay);
    }
    [q, m1, v1]
}

/// Operands of `shape` in `dtype`: the second moment is non-negative.
fn operands(shape: &[usize], dtype: DType, seed: u64) -> [Tensor; 4] {
    let n = shape.iter().product();
    let t = |k: u64| Tensor::from_vec(values(n, seed + k), shape).cast(dtype);
    [t(0), t(1), t(2), t(3).abs()]
}

fn bits(t: &Tensor) -> Vec<u8> {
    t.to_host_buffer().to_le_bytes()
}

#[test]
fn the_fused_update_is_the_formula_bit_for_bit() {
    for dtype in [DType::F32, DType::F64] {
        for shape in [&[7usize][..], &[3, 5], &[400, 250]] {
            for (wd, decoupled) in [(0.0, false), (0.05, false), (0.05, true)] {
                let s = step(wd, decoupled);
                let [p, g, m, v] = operands(shape, dtype, 11);
                let (q, m1, v1) = nb::adam_update(&p, &g, &m, &v, &count(T), &s);
                let want = reference(&p, &g, &m, &v, &s);
                for (name, got, want) in [("param", &q, &want[0]), ("m", &m1, &want[1]), ("v", &v1, &want[2])] {
                    assert_eq!(got.shape(), shape, "{name}");
                    assert_eq!(got.dtype(), dtype, "{name}");
                    assert_eq!(
                        bits(got),
                        bits(want),
                        "{name} {dtype} {shape:?} wd {wd} decoupled {decoupled}"
                    );
                }
            }
        }
    }
}

#[test]
fn strided_operands_update_like_their_copies() {
    let s = step(0.01, true);
    let [p, g, m, v] = operands(&[6, 4], DType::F32, 5);
    // Transposed views of [4, 6] tensors, and the same values contiguous.
    let [pt, gt, mt, vt] = [&p, &g, &m, &v].map(|t| t.transpose());
    let dense = [&pt, &gt, &mt, &vt].map(|t| t + 0.0);
    let (a, b, c) = nb::adam_update(&pt, &gt, &mt, &vt, &count(T), &s);
    let (x, y, z) = nb::adam_update(&dense[0], &dense[1], &dense[2], &dense[3], &count(T), &s);
    assert_eq!([bits(&a), bits(&b), bits(&c)], [bits(&x), bits(&y), bits(&z)]);
}

#[test]
fn halves_compute_in_f32_and_round_once() {
    for dtype in [DType::BF16, DType::F16] {
        let s = step(0.05, false);
        let [p, g, m, v] = operands(&[50], dtype, 2);
        let (q, m1, v1) = nb::adam_update(&p, &g, &m, &v, &count(T), &s);
        let wide = [&p, &g, &m, &v].map(|t| t.cast(DType::F64));
        let want = reference(&wide[0], &wide[1], &wide[2], &wide[3], &s);
        let rel = if dtype == DType::BF16 { 8e-3 } else { 1e-3 };
        for (got, want) in [(&q, &want[0]), (&m1, &want[1]), (&v1, &want[2])] {
            assert_eq!(got.dtype(), dtype);
            for (a, b) in got.to_vec::<f64>().iter().zip(want.to_vec::<f64>()) {
                assert!((a - b).abs() <= rel * b.abs() + 1e-6, "{dtype}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn under_jit_the_update_is_one_step_replayed_on_new_values_and_step_numbers() {
    let s = step(0.0, false);
    let f = nb::Jit::new(move |xs: &Vec<Tensor>| {
        let (q, m1, v1) = nb::adam_update(&xs[0], &xs[1], &xs[2], &xs[3], &xs[4], &s);
        vec![q, m1, v1]
    });
    for (seed, t) in [(1u64, 1i64), (2, 2), (3, 1000)] {
        let mut xs = operands(&[5, 3], DType::F32, seed).to_vec();
        xs.push(count(t));
        let got = f.call(&xs);
        // The replays read the step number they are given, not the traced one.
        let want = reference_at(&xs[0], &xs[1], &xs[2], &xs[3], &s, t);
        for (a, b) in got.iter().zip(&want) {
            assert_eq!(bits(a), bits(b), "call {seed} at step {t}");
        }
    }
    let info = f.cache_info();
    assert_eq!((info.compiled, info.replays), (1, 2), "{:?}", info.eager);
}

#[test]
fn traced_operands_take_the_formula_and_have_derivatives() {
    let s = step(0.05, false);
    let [p, g, m, v] = operands(&[4], DType::F64, 9);
    // d(sum of the new parameter) / d(gradient), against central differences.
    let f = |g: &Tensor| {
        nb::adam_update(&p, g, &m, &v, &count(T), &s)
            .0
            .sum(nb::Axes::All, false)
    };
    let d = nb::grad(f)(&g).to_vec::<f64>();
    let h = 1e-6;
    for i in 0..4 {
        let bump = |e: f64| {
            let mut gv = g.to_vec::<f64>();
            gv[i] += e;
            f(&Tensor::from_vec(gv, &[4])).item::<f64>()
        };
        let fd = (bump(h) - bump(-h)) / (2.0 * h);
        assert!(
            (d[i] - fd).abs() <= 1e-6 * (1.0 + fd.abs()),
            "element {i}: {} vs {fd}",
            d[i]
        );
    }
    // The traced value is the fused one.
    let (q, ..) = nb::adam_update(&p, &g, &m, &v, &count(T), &s);
    let traced = nb::vjp(|g: &Tensor| nb::adam_update(&p, g, &m, &v, &count(T), &s).0, &g).0;
    assert_eq!(bits(&traced), bits(&q));
}

#[test]
fn mismatched_operands_are_refused_by_name() {
    let s = step(0.0, false);
    let [p, g, m, _] = operands(&[4], DType::F32, 1);
    let short = Tensor::zeros(&[3], DType::F32);
    let call = std::panic::AssertUnwindSafe(|| nb::adam_update(&p, &g, &m, &short, &count(T), &s));
    let e = std::panic::catch_unwind(call).unwrap_err();
    let e = e.downcast::<String>().map(|s| *s).unwrap_or_default();
    assert!(
        e.contains("adam_update: v is [3] f32 but the parameter is [4] f32"),
        "{e}"
    );
    let call = std::panic::AssertUnwindSafe(|| nb::adam_update(&p, &g, &m, &m, &Tensor::from_vec(vec![3.0], &[]), &s));
    let e = std::panic::catch_unwind(call).unwrap_err();
    let e = e.downcast::<String>().map(|s| *s).unwrap_or_default();
    assert!(e.contains("the step count must be one i64 element"), "{e}");
}
