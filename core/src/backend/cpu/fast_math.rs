//! Branch-free f32 `exp`, `tanh`, `erf` and `erfc` that the compiler vectorises (the libm calls
//! do not, and dominate an MLP step's elementwise time, or a transformer's exact GELU: libm's
//! `erff` was an eighth of a block step). Accuracy is checked against f64 in the tests below:
//! exp within 3e-7 relative, tanh within 1e-6, erf within 4 ulp, erfc within 6e-6 relative
//! wherever it is a normal f32 (the rounding of `a^2` in its `e^(-a^2)` dominates far out).

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a high part exact in f32 and a low correction (Cody & Waite's reduction).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and subtracting 1.5 * 2^23 rounds an f32 of magnitude below 2^22 to an integer.
const ROUND: f32 = 12_582_912.0;

/// `e^x` for f32: `x = n ln2 + r`, `|r| <= ln2 / 2`, a degree-6 Taylor polynomial for `e^r`, and
/// `2^n` built from the exponent bits. Over/underflow and NaN are handled by selects.
#[inline(always)]
pub(super) fn exp_f32(x: f32) -> f32 {
    let xc = x.clamp(-86.5, 88.72);
    let shifted = xc * LOG2E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // The integer n sits in the low mantissa bits of `shifted` (1.5 * 2^23 + n), so it is read
    // with integer arithmetic on the bits: `n as i32` would add a saturating conversion that
    // keeps the loop scalar. 2^n as 2^(n-1) * 2 keeps the exponent field valid for n = 128.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let scale = f32::from_bits((n_int.wrapping_add(126) as u32) << 23);
    let y = p * scale * 2.0;
    let y = if x > 88.72 { f32::INFINITY } else { y };
    let y = if x < -103.0 { 0.0 } else { y };
    if x.is_nan() { x } else { y }
}

/// `tanh(x)` for f32: an odd Taylor polynomial near 0, `(1 - e^-2|x|) / (1 + e^-2|x|)`
/// elsewhere, saturating at ±1. Relative error below 1e-6 (the subtraction loses a few bits
/// just above the polynomial's range).
#[inline(always)]
pub(super) fn tanh_f32(x: f32) -> f32 {
    let a = x.abs().min(9.0);
    let e = exp_f32(-2.0 * a);
    let big = (1.0 - e) / (1.0 + e);
    let a2 = a * a;
    let small = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0))));
    let t = if a < 0.0625 { small } else { big };
    if x.is_nan() { x } else { t.copysign(x) }
}

/// Below this, `erf` is its odd rational form; from it on, `erfc` is its tail form.
const ERF_SPLIT: f32 = 0.84;
/// `erf(a) = a P(a^2) / Q(a^2)` on `[0, ERF_SPLIT]` (relative error 2e-8 in exact arithmetic).
/// Fitted by `ci/fit_erf_f32.py` (weighted least squares on the relative error, Lawson
/// iterations); `P` then `Q`, constant term first.
#[allow(clippy::approx_constant, reason = "a fitted coefficient, one ulp from 2 / sqrt(pi)")]
const ERF_SMALL_P: [f32; 3] = [1.1283791, 0.1076336, 0.01638756];
const ERF_SMALL_Q: [f32; 3] = [1.0, 0.4287195, 0.057449568];
/// `erfc(a) e^(a^2) = P(a) / Q(a)` on `[ERF_SPLIT, 10]` (relative error 2e-8), same script.
const ERFC_TAIL_P: [f32; 4] = [0.999336, 1.1471967, 0.5892767, 0.1459501];
const ERFC_TAIL_Q: [f32; 5] = [1.0, 2.271238, 2.1654282, 1.0442787, 0.2586952];

#[inline(always)]
fn poly<const N: usize>(c: [f32; N], t: f32) -> f32 {
    let mut r = c[N - 1];
    for k in (0..N - 1).rev() {
        r = r * t + c[k];
    }
    r
}

/// `(erf(a), erfc(a))` for `a >= 0`, both evaluated and the one that keeps its precision
/// selected: `erf` near 0, `erfc` in the tail (where `1 - erf` would cancel).
#[inline(always)]
fn erf_erfc_nonnegative(a: f32) -> (f32, f32) {
    let t = a * a;
    let small = a * poly(ERF_SMALL_P, t) / poly(ERF_SMALL_Q, t);
    // Past 9.25 erfc is below f32's normal range (erfc(9.25) = 7e-39) and is flushed to zero;
    // the clamp keeps exp_f32 in its exact range and the rational in its fitted one.
    let ac = a.min(9.25);
    let tail = exp_f32(-(ac * ac)) * poly(ERFC_TAIL_P, ac) / poly(ERFC_TAIL_Q, ac);
    let tail = if a > 9.25 { 0.0 } else { tail };
    if a < ERF_SPLIT {
        (small, 1.0 - small)
    } else {
        (1.0 - tail, tail)
    }
}

/// `erf(x)` for f32, within 4 ulp.
#[inline(always)]
pub(super) fn erf_f32(x: f32) -> f32 {
    let (e, _) = erf_erfc_nonnegative(x.abs());
    if x.is_nan() { x } else { e.copysign(x) }
}

/// [`erf_f32`] as a closure that the elementwise loops inline whole: passed as a function
/// item, it is called once per element and the loop does not vectorise (five times slower).
pub(super) fn erf_f32_inlined() -> impl Fn(f32) -> f32 + Copy {
    #[allow(
        clippy::redundant_closure,
        reason = "the closure carries inline(always); the function item does not"
    )]
    #[inline(always)]
    |x| erf_f32(x)
}

/// `erfc(x) = 1 - erf(x)` for f32, with its relative precision kept in the tail (`erfc(-x)`
/// is `2 - erfc(x)`), so that `0.5 x erfc(-x / sqrt 2)`, the exact GELU, does not cancel to
/// zero for negative `x` as `0.5 x (1 + erf(x / sqrt 2))` does.
#[inline(always)]
pub(super) fn erfc_f32(x: f32) -> f32 {
    let (_, c) = erf_erfc_nonnegative(x.abs());
    let c = if x < 0.0 { 2.0 - c } else { c };
    if x.is_nan() { x } else { c }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep() -> impl Iterator<Item = f32> {
        (-200_000..=200_000)
            .map(|i| i as f32 * 1e-4)
            .chain([-90.0, -87.5, 88.5, 1e-30, -1e-30, 0.0])
    }

    #[test]
    fn exp_is_within_a_few_ulp() {
        for x in sweep() {
            let want = (x as f64).exp();
            let got = exp_f32(x) as f64;
            let rel = ((got - want) / want).abs();
            assert!(
                rel < 3e-7 || (want < 1e-37 && got < 1e-37),
                "exp({x}) = {got}, want {want}, rel {rel}"
            );
        }
        assert_eq!(exp_f32(100.0), f32::INFINITY);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert!(exp_f32(f32::NAN).is_nan());
    }

    #[test]
    fn tanh_is_within_a_few_ulp() {
        for x in sweep() {
            let want = (x as f64).tanh();
            let got = tanh_f32(x) as f64;
            let err = (got - want).abs();
            assert!(
                err <= 1e-6 * want.abs().max(1e-30) || err < 1e-38,
                "tanh({x}) = {got}, want {want}"
            );
        }
        assert_eq!(tanh_f32(50.0), 1.0);
        assert_eq!(tanh_f32(-50.0), -1.0);
        assert!(tanh_f32(f32::NAN).is_nan());
    }

    /// The spacing of f32 values at `v` (one ulp).
    fn ulp(v: f64) -> f64 {
        let f = (v.abs() as f32).max(f32::MIN_POSITIVE);
        (f32::from_bits(f.to_bits() + 1) - f) as f64
    }

    #[test]
    fn erf_is_within_four_ulp() {
        for x in sweep().chain([ERF_SPLIT, -ERF_SPLIT, 0.839_999_9, 10.0, 1e30, -1e30]) {
            let want = libm::erf(x as f64);
            let got = erf_f32(x) as f64;
            assert!((got - want).abs() <= 4.0 * ulp(want), "erf({x}) = {got}, want {want}");
        }
        assert_eq!(erf_f32(0.0), 0.0);
        assert_eq!(erf_f32(f32::INFINITY), 1.0);
        assert_eq!(erf_f32(f32::NEG_INFINITY), -1.0);
        assert!(erf_f32(f32::NAN).is_nan());
    }

    #[test]
    fn erfc_keeps_its_relative_precision_in_the_tail() {
        let mut worst: f64 = 0.0;
        for x in sweep().chain([ERF_SPLIT, -ERF_SPLIT, 9.0, 9.1, 1e30, -1e30]) {
            let want = libm::erfc(x as f64);
            let got = erfc_f32(x) as f64;
            if want < f32::MIN_POSITIVE as f64 {
                assert!(got < 1e-37, "erfc({x}) = {got}, want {want}");
                continue;
            }
            let rel = ((got - want) / want).abs();
            worst = worst.max(rel);
            assert!(rel < 6e-6, "erfc({x}) = {got}, want {want}, rel {rel}");
        }
        // Where 1 - erf would have kept no digit at all (erfc(5) = 1.5e-12).
        assert!(worst > 0.0);
        assert_eq!(erfc_f32(f32::INFINITY), 0.0);
        assert_eq!(erfc_f32(f32::NEG_INFINITY), 2.0);
        assert!(erfc_f32(f32::NAN).is_nan());
    }
}
