//! GELU and its derivative in one pass each (both forms: the tanh approximation and the exact
//! one through erf), where the composition took five to eight elementwise kernels forward and
//! about a dozen backward. Each takes the `tanh`, or the `erfc` and `exp`, of its element type
//! (the vectorised ones of `fast_math` for f32, libm's for f64).

use num_traits::Float;

use super::fast_math::{erfc_f32, exp_f32};
use super::of;
use crate::backend::{GELU_CUBIC, NORMAL_DENSITY_SCALE, gelu_tanh_scale};

/// `0.5 x (1 + tanh(c (x + a x^3)))`.
pub(super) fn tanh_form<T: Float>(tanh: impl Fn(T) -> T) -> impl Fn(T) -> T {
    let (half, one, c, a) = (of::<T>(0.5), T::one(), of::<T>(gelu_tanh_scale()), of::<T>(GELU_CUBIC));
    move |x| half * x * (one + tanh(c * (x + a * x * x * x)))
}

/// `0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)` with `t = tanh(c (x + a x^3))`.
pub(super) fn tanh_form_derivative<T: Float>(tanh: impl Fn(T) -> T) -> impl Fn(T) -> T {
    let (half, one, c, a) = (of::<T>(0.5), T::one(), of::<T>(gelu_tanh_scale()), of::<T>(GELU_CUBIC));
    let three_a = of::<T>(3.0 * GELU_CUBIC);
    move |x| {
        let t = tanh(c * (x + a * x * x * x));
        half * (one + t) + half * x * (one - t * t) * c * (one + three_a * x * x)
    }
}

/// `x Phi(x) = 0.5 x erfc(-x / sqrt(2))`: the same as `0.5 x (1 + erf(x / sqrt(2)))`, without
/// its cancellation for negative `x` (where `1 + erf` loses every digit by `x = -6`).
pub(super) fn erf_form<T: Float>(erfc: impl Fn(T) -> T) -> impl Fn(T) -> T {
    let (half, r) = (of::<T>(0.5), of::<T>(std::f64::consts::FRAC_1_SQRT_2));
    move |x| half * x * erfc(-x * r)
}

/// `Phi(x) + x phi(x) = 0.5 erfc(-x / sqrt(2)) + x e^(-x^2 / 2) / sqrt(2 pi)`.
pub(super) fn erf_form_derivative<T: Float>(erfc: impl Fn(T) -> T, exp: impl Fn(T) -> T) -> impl Fn(T) -> T {
    let (half, r) = (of::<T>(0.5), of::<T>(std::f64::consts::FRAC_1_SQRT_2));
    let density = of::<T>(NORMAL_DENSITY_SCALE);
    move |x| half * erfc(-x * r) + x * exp(-(half * x * x)) * density
}

/// [`erf_form`] for f32 through the vectorised `erfc`. The closure is always inlined and calls
/// `erfc_f32` directly, so that the elementwise loop holds the whole formula and vectorises it
/// (given `erfc_f32` as an argument, or left to itself, the compiler calls a closure this size
/// once per element: twice the time).
pub(super) fn erf_form_f32() -> impl Fn(f32) -> f32 {
    #[inline(always)]
    |x| 0.5 * x * erfc_f32(-x * std::f32::consts::FRAC_1_SQRT_2)
}

/// [`erf_form_derivative`] for f32 through the vectorised `erfc` and `exp` (inlined whole, as
/// [`erf_form_f32`]).
pub(super) fn erf_form_derivative_f32() -> impl Fn(f32) -> f32 {
    let density = NORMAL_DENSITY_SCALE as f32;
    #[inline(always)]
    move |x| 0.5 * erfc_f32(-x * std::f32::consts::FRAC_1_SQRT_2) + x * exp_f32(-0.5 * x * x) * density
}
