//! GELU and its derivative in one pass each (both forms: the tanh approximation and the exact
//! one through erf), where the composition took five to eight elementwise kernels forward and
//! about a dozen backward. Each takes the `tanh` or `erf` of its element type (the vectorised
//! tanh and libm's `erff` for f32).

use num_traits::Float;

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

/// `0.5 x (1 + erf(x / sqrt(2)))`.
pub(super) fn erf_form<T: Float>(erf: impl Fn(T) -> T) -> impl Fn(T) -> T {
    let (half, one, r) = (of::<T>(0.5), T::one(), of::<T>(std::f64::consts::FRAC_1_SQRT_2));
    move |x| half * x * (one + erf(x * r))
}

/// `0.5 (1 + erf(x / sqrt(2))) + x e^(-x^2 / 2) / sqrt(2 pi)`.
pub(super) fn erf_form_derivative<T: Float>(erf: impl Fn(T) -> T) -> impl Fn(T) -> T {
    let (half, one, r) = (of::<T>(0.5), T::one(), of::<T>(std::f64::consts::FRAC_1_SQRT_2));
    let density = of::<T>(NORMAL_DENSITY_SCALE);
    move |x| half * (one + erf(x * r)) + x * (-(half * x * x)).exp() * density
}
