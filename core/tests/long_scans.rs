//! Running sums and products over long axes, where `cumsum` switches from one triangular
//! product to blocks (the JAX fixtures cover short axes): values against a sequential f64 loop,
//! and the VJP and JVP against their closed forms (the reversed running sum of the cotangent,
//! the running sum of the tangent), at lengths on both sides of every block boundary.

use nabla_core::{DType, Rng, Tensor};

/// Running sums along the last axis of a [rows, n] f64 tensor, by a plain loop.
fn loop_cumsum(x: &Tensor) -> Vec<f64> {
    let n = x.shape()[1];
    let v = x.to_vec::<f64>();
    let mut out = vec![0.0; v.len()];
    for r in 0..x.shape()[0] {
        let mut acc = 0.0;
        for i in 0..n {
            acc += v[r * n + i];
            out[r * n + i] = acc;
        }
    }
    out
}

fn assert_close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}: element {i}: {g} vs {w}"
        );
    }
}

#[test]
fn cumsum_over_long_axes_matches_a_loop_and_its_derivatives_match_their_closed_forms() {
    let mut rng = Rng::new(11);
    // Around one block (64), several, a block of blocks (4096) and beyond it.
    for n in [63, 64, 65, 128, 200, 4095, 4096, 4097, 9000] {
        let x = rng.normal(&[3, n], 0.0, 1.0, DType::F64);
        let want = loop_cumsum(&x);
        assert_close(&format!("cumsum n={n}"), &x.cumsum(1).to_vec::<f64>(), &want, 1e-12);
        // The same along axis 0 of the transpose.
        let t = x.transpose().cumsum(0).transpose();
        assert_close(&format!("cumsum axis 0 n={n}"), &t.to_vec::<f64>(), &want, 1e-12);

        let ct = rng.normal(&[3, n], 0.0, 1.0, DType::F64);
        let (_, pullback) = nabla_core::vjp(|x: &Tensor| x.cumsum(1), &x);
        let grad = pullback(&ct);
        // d/dx_i of sum_j ct_j y_j = sum_{j >= i} ct_j: the reversed running sum.
        let reversed = ct.flip(1);
        let want_grad = Tensor::from_vec(loop_cumsum(&reversed), &[3, n]).flip(1);
        assert_close(
            &format!("vjp n={n}"),
            &grad.to_vec::<f64>(),
            &want_grad.to_vec::<f64>(),
            1e-12,
        );

        let tangent = rng.normal(&[3, n], 0.0, 1.0, DType::F64);
        let (_, out_tangent) = nabla_core::jvp(|x: &Tensor| x.cumsum(1), &x, &tangent);
        assert_close(
            &format!("jvp n={n}"),
            &out_tangent.to_vec::<f64>(),
            &loop_cumsum(&tangent),
            1e-12,
        );
    }
}

#[test]
fn cumsum_in_f32_over_a_long_axis_stays_within_f32_roundoff() {
    let mut rng = Rng::new(12);
    let n = 10_000;
    let x = rng.normal(&[1, n], 0.0, 1.0, DType::F64);
    let want = loop_cumsum(&x);
    let got: Vec<f64> = x.cast(DType::F32).cumsum(-1).to_vec::<f64>();
    // Blocked sums add at most 64 + 64 + 3 terms per output in f32 (plus the f32 input rounding).
    let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-4 * scale, "element {i}: {g} vs {w}");
    }
}
