//! The exact GELU and its derivative keep their relative precision across the whole range,
//! the negative tail included: `x Phi(x)` is computed through `erfc(-x / sqrt 2)`, so it does
//! not cancel to zero as `0.5 x (1 + erf(x / sqrt 2))` does (in f32 that form has no correct
//! digit left at `x = -6`, where GELU is -6e-9). Checked against the f64 formula, on the
//! values each dtype holds. The fixture matrix checks the same ops against JAX at moderate `x`.

use nabla_core as nb;
use nb::{DType, Tensor};

const FRAC_1_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// `x Phi(x)`, and the magnitude its error is measured against (itself).
fn gelu(x: f64) -> (f64, f64) {
    let v = 0.5 * x * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2);
    (v, v.abs())
}

/// `Phi(x) + x phi(x)`, and the sum of its terms' magnitudes: near its zero at x = -0.75 the
/// two terms cancel, and the error is relative to them, not to their small difference.
fn gelu_derivative(x: f64) -> (f64, f64) {
    let cdf = 0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2);
    let density = x * (-0.5 * x * x).exp() * FRAC_1_SQRT_2PI;
    (cdf + density, cdf.abs() + density.abs())
}

/// `x` from -13 to 8 by 1/128 (exact in every float dtype), and a few far points.
fn inputs() -> Vec<f64> {
    (-13 * 128..=8 * 128)
        .map(|i| i as f64 / 128.0)
        .chain([-40.0, 40.0, 1e-20, -1e-20])
        .collect()
}

fn check(what: &str, dtype: DType, x: &[f64], got: &Tensor, want: impl Fn(f64) -> (f64, f64)) {
    let rel = if dtype == DType::F64 { 1e-12 } else { 3e-5 };
    // Below f32's normal range the f32 result may be flushed to zero.
    let floor = if dtype == DType::F64 { 1e-300 } else { 1e-36 };
    let got = got.cast(DType::F64).to_vec::<f64>();
    for (&x, &g) in x.iter().zip(&got) {
        let (w, scale) = want(x);
        let ok = if scale < floor {
            g.abs() < floor * 10.0
        } else {
            (g - w).abs() <= rel * scale
        };
        assert!(ok, "{what} {dtype} at x = {x}: got {g:e}, want {w:e}");
    }
}

#[test]
fn exact_gelu_and_its_derivative_keep_their_precision_in_both_tails() {
    for dtype in [DType::F32, DType::F64] {
        let x = Tensor::from_vec(inputs(), &[inputs().len()]).cast(dtype);
        let held = x.cast(DType::F64).to_vec::<f64>();
        check("gelu_exact", dtype, &held, &x.gelu_exact(), gelu);
        let g = nb::grad(|x: &Tensor| x.gelu_exact().sum(nb::Axes::All, false))(&x);
        check("d gelu_exact", dtype, &held, &g, gelu_derivative);
    }
}

#[test]
fn f32_erf_is_odd_saturates_and_keeps_nan() {
    let x = Tensor::from_vec(vec![-30.0f32, -3.0, -0.5, 0.0, 0.5, 3.0, 30.0, f32::NAN], &[8]);
    let e = x.erf().to_vec::<f32>();
    assert_eq!((e[0], e[3], e[6]), (-1.0, 0.0, 1.0));
    assert_eq!(e[1], -e[5]);
    assert_eq!(e[2], -e[4]);
    assert!(((e[4] as f64) - libm::erf(0.5)).abs() < 1e-7, "{}", e[4]);
    assert!(e[7].is_nan());
}
