//! The generated kernels run on the host (see `emulate/cuda_host.h`: one std::thread per CUDA
//! thread, barriers for `__syncthreads` and warp shuffles) against references written here with
//! the CPU backend's semantics. Skips with one line when no C++ compiler is found.

#[path = "emulate/harness.rs"]
mod harness;

use harness::{Arg, available, error_record, run};
use nabla_kernels::KernelDType::{self, *};
use nabla_kernels::*;

// ---- values of every dtype, as bytes -----------------------------------------------------

/// `x` rounded to nearest-even into a binary16-like format (`mant` fraction bits, `ebits`
/// exponent bits), as bits. Written on the bits of `x` (the emulator uses frexp/ldexp), so the
/// two implementations check each other.
fn round_bits(x: f64, mant: i32, ebits: i32) -> u16 {
    let bias = (1 << (ebits - 1)) - 1;
    let sign: u16 = if x.is_sign_negative() { 0x8000 } else { 0 };
    let inf = (((1 << ebits) - 1) << mant) as u16;
    if x.is_nan() {
        return sign | inf | (1 << (mant - 1));
    }
    if x.is_infinite() {
        return sign | inf;
    }
    let bits = x.abs().to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    if exp == 0 && frac == 0 {
        return sign;
    }
    let (m, e) = if exp == 0 {
        (frac, -1074)
    } else {
        (frac | 1 << 52, exp - 1075)
    };
    let log2 = 63 - m.leading_zeros() as i32 + e;
    let mut q = (log2 - mant).max(1 - bias - mant);
    let shift = q - e;
    let mut r = if shift <= 0 {
        m << -shift
    } else if shift >= 64 {
        0
    } else {
        let (r0, rem, half) = (m >> shift, m & ((1u64 << shift) - 1), 1u64 << (shift - 1));
        if rem > half || (rem == half && r0 & 1 == 1) {
            r0 + 1
        } else {
            r0
        }
    };
    if r >> (mant + 1) != 0 {
        r >>= 1;
        q += 1;
    }
    if r == 0 {
        return sign;
    }
    if r < 1 << mant {
        return sign | r as u16;
    }
    let biased = q + mant + bias;
    if biased >= (1 << ebits) - 1 {
        return sign | inf;
    }
    sign | ((biased as u16) << mant) | (r - (1 << mant)) as u16
}

fn bits_value(b: u16, mant: i32, ebits: i32) -> f64 {
    let bias = (1 << (ebits - 1)) - 1;
    let s = if b & 0x8000 != 0 { -1.0 } else { 1.0 };
    let e = ((b as i32) >> mant) & ((1 << ebits) - 1);
    let m = (b as i32) & ((1 << mant) - 1);
    if e == (1 << ebits) - 1 {
        return if m != 0 { f64::NAN } else { s * f64::INFINITY };
    }
    if e == 0 {
        return s * m as f64 * 2f64.powi(1 - bias - mant);
    }
    s * ((1 << mant) + m) as f64 * 2f64.powi(e - bias - mant)
}

fn fmt_of(d: KernelDType) -> (i32, i32) {
    if d == F16 { (10, 5) } else { (7, 8) }
}

/// `x` as a value of float dtype `d` (rounded to nearest), back as f64.
fn quantize(d: KernelDType, x: f64) -> f64 {
    match d {
        F64 => x,
        F32 => x as f32 as f64,
        F16 | BF16 => {
            let (m, e) = fmt_of(d);
            bits_value(round_bits(x, m, e), m, e)
        }
        _ => unreachable!(),
    }
}

/// `x` converted to integer dtype `d` with Rust's `as` (saturating truncation), as i64.
fn f64_to_int(d: KernelDType, x: f64) -> i64 {
    match d {
        I64 => x as i64,
        I32 => x as i32 as i64,
        U8 => x as u8 as i64,
        Bool => (x != 0.0) as i64,
        _ => unreachable!(),
    }
}

/// An integer wrapped into integer dtype `d` (Rust's `as` between integers); unchanged for
/// floats (the tests keep such integers small).
fn wrap_int(d: KernelDType, v: i64) -> i64 {
    match d {
        _ if d.is_float() => v,
        I64 => v,
        I32 => v as i32 as i64,
        U8 => v as u8 as i64,
        Bool => (v != 0) as i64,
        _ => unreachable!(),
    }
}

fn encode_f(d: KernelDType, xs: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &x in xs {
        match d {
            F32 => out.extend((x as f32).to_le_bytes()),
            F64 => out.extend(x.to_le_bytes()),
            F16 | BF16 => {
                let (m, e) = fmt_of(d);
                out.extend(round_bits(x, m, e).to_le_bytes())
            }
            _ => unreachable!(),
        }
    }
    out
}

fn encode_i(d: KernelDType, xs: &[i64]) -> Vec<u8> {
    let mut out = Vec::new();
    for &x in xs {
        match d {
            I64 => out.extend(x.to_le_bytes()),
            I32 => out.extend((x as i32).to_le_bytes()),
            U8 => out.push(x as u8),
            Bool => out.push((x != 0) as u8),
            _ => unreachable!(),
        }
    }
    out
}

fn decode_f(d: KernelDType, b: &[u8]) -> Vec<f64> {
    match d {
        F32 => b
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        F64 => b.chunks(8).map(|c| f64::from_le_bytes(c.try_into().unwrap())).collect(),
        F16 | BF16 => {
            let (m, e) = fmt_of(d);
            b.chunks(2)
                .map(|c| bits_value(u16::from_le_bytes(c.try_into().unwrap()), m, e))
                .collect()
        }
        _ => unreachable!(),
    }
}

fn decode_i(d: KernelDType, b: &[u8]) -> Vec<i64> {
    match d {
        I64 => b.chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect(),
        I32 => b
            .chunks(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64)
            .collect(),
        U8 => b.iter().map(|&v| v as i64).collect(),
        Bool => {
            assert!(b.iter().all(|&v| v <= 1), "bools must be 0 or 1: {b:?}");
            b.iter().map(|&v| v as i64).collect()
        }
        _ => unreachable!(),
    }
}

/// Values of any dtype, as f64 (ints and bools exactly up to 2^53, which the tests stay in or
/// compare as i64).
#[derive(Clone, Debug)]
enum Vals {
    F(Vec<f64>),
    I(Vec<i64>),
}

impl Vals {
    fn encode(&self, d: KernelDType) -> Vec<u8> {
        match self {
            Vals::F(v) => encode_f(d, v),
            Vals::I(v) => encode_i(d, v),
        }
    }
    fn decode(d: KernelDType, b: &[u8]) -> Vals {
        if d.is_float() {
            Vals::F(decode_f(d, b))
        } else {
            Vals::I(decode_i(d, b))
        }
    }
    fn len(&self) -> usize {
        match self {
            Vals::F(v) => v.len(),
            Vals::I(v) => v.len(),
        }
    }
    fn reversed(&self) -> Vals {
        match self {
            Vals::F(v) => Vals::F(v.iter().rev().copied().collect()),
            Vals::I(v) => Vals::I(v.iter().rev().copied().collect()),
        }
    }
}

/// Relative tolerance for results that went through a transcendental function or a sum.
fn tol(d: KernelDType) -> f64 {
    match d {
        F32 => 1e-6,
        F64 => 1e-13,
        F16 => 2e-3,
        BF16 => 1.6e-2,
        _ => 0.0,
    }
}

fn close(got: f64, want: f64, rel: f64) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() || rel == 0.0 {
        return got == want && got.is_sign_negative() == want.is_sign_negative();
    }
    (got - want).abs() <= rel * want.abs().max(1e-30) || (got - want).abs() < 1e-300
}

fn assert_vals(what: &str, got: &Vals, want: &Vals, rel: f64) {
    match (got, want) {
        (Vals::F(g), Vals::F(w)) => {
            assert_eq!(g.len(), w.len(), "{what}");
            for (k, (&g, &w)) in g.iter().zip(w).enumerate() {
                assert!(
                    close(g, w, rel),
                    "{what}: element {k}: got {g:e}, want {w:e}\n got {g:?}\nwant {w:?}"
                );
            }
        }
        (Vals::I(g), Vals::I(w)) => assert_eq!(g, w, "{what}"),
        _ => panic!("{what}: kinds differ"),
    }
}

fn launch_1d(spec: &KernelSpec, args: Vec<Arg>) -> Vec<Option<Vec<u8>>> {
    run(spec, 2, 64, args)
}

/// An input of `vals` for an elementwise kernel: contiguous, or read through a flipped layout
/// (the buffer holds the values reversed) for the strided variant.
fn elementwise_input(d: KernelDType, vals: &Vals, variant: Variant) -> Vec<Arg> {
    let n = vals.len();
    match variant {
        Variant::Contiguous => vec![Arg::Buf(vals.encode(d))],
        Variant::Strided => {
            let l = KernelLayout::new(&[n], &[-1], n - 1).unwrap();
            vec![Arg::Buf(vals.reversed().encode(d)), Arg::layout(&l)]
        }
    }
}

// ---- layouts ------------------------------------------------------------------------

#[test]
fn device_index_mapping_is_the_rust_one() {
    if !available() {
        return;
    }
    // The strided copy reads element i at nb_offset(layout, i): compare with offset_of.
    let spec: KernelSpec = CopySpec::new(I64).unwrap().into();
    let eight_shape = [2usize, 3, 2, 2, 3, 2, 2, 2];
    let eight_strides: Vec<isize> = vec![1, 2 * 2 * 3 * 2 * 2 * 2 * 2, 2, 4, 8, 24, 48, 96];
    let cases: Vec<(Vec<usize>, Vec<isize>, usize)> = vec![
        (vec![4, 3], vec![1, 4], 2),                      // transposed, with an offset
        (vec![3, 4], vec![0, 1], 0),                      // broadcast rows
        (vec![2, 3, 4], vec![0, 1, 3], 1),                // broadcast of a transposed view
        (vec![5, 2], vec![-2, 1], 8),                     // flipped rows
        (vec![2, 1, 3, 4], vec![12, 99, 1, 3], 0),        // extent-1 axis, transposed pair
        (eight_shape.to_vec(), eight_strides.clone(), 0), // 8 axes that do not merge
    ];
    for (shape, strides, offset) in cases {
        let l = KernelLayout::new(&shape, &strides, offset).unwrap();
        let n = l.numel() as usize;
        let span = (0..n as i64).map(|i| l.offset_of(i)).max().unwrap() as usize + 1;
        let buf: Vec<i64> = (0..span as i64).map(|v| 1000 + v).collect();
        let out = launch_1d(
            &spec,
            vec![
                Arg::zeros(8 * n),
                Arg::Buf(encode_i(I64, &buf)),
                Arg::layout(&l),
                Arg::i64(n as i64),
            ],
        );
        let want: Vec<i64> = (0..n as i64).map(|i| buf[l.offset_of(i) as usize]).collect();
        assert_eq!(
            decode_i(I64, out[0].as_ref().unwrap()),
            want,
            "{shape:?} {strides:?} -> {l:?}"
        );
    }
}

// ---- elementwise ---------------------------------------------------------------------

fn float_inputs(d: KernelDType) -> Vec<f64> {
    [
        -2.5,
        -1.0,
        -0.0,
        0.0,
        0.25,
        1.0,
        3.0,
        20.0,
        -20.0,
        1e-3,
        -0.7,
        // Ties of round (to even: 0, 2, 2, -0).
        0.5,
        1.5,
        2.5,
        -0.5,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ]
    .iter()
    .map(|&x| quantize(d, x))
    .collect()
}

fn int_inputs(d: KernelDType) -> Vec<i64> {
    let (min, max) = match d {
        I64 => (i64::MIN, i64::MAX),
        I32 => (i32::MIN as i64, i32::MAX as i64),
        U8 => (0, 255),
        _ => (0, 1),
    };
    [min, -5, -1, 0, 1, 7, max].iter().map(|&v| wrap_int(d, v)).collect()
}

fn unary_float_ref(op: UnaryOp, x: f64) -> f64 {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Log1p => x.ln_1p(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => 1.0 / x.sqrt(),
        UnaryOp::Sin => x.sin(),
        UnaryOp::Cos => x.cos(),
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Sigmoid => {
            if x >= 0.0 {
                1.0 / (1.0 + (-x).exp())
            } else {
                x.exp() / (1.0 + x.exp())
            }
        }
        UnaryOp::Abs => x.abs(),
        UnaryOp::Sign => {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x
            }
        }
        UnaryOp::Relu => {
            if x > 0.0 {
                x
            } else {
                0.0
            }
        }
        UnaryOp::Erf => libm::erf(x),
        UnaryOp::Floor => x.floor(),
        UnaryOp::Ceil => x.ceil(),
        UnaryOp::Round => x.round_ties_even(),
        UnaryOp::Trunc => x.trunc(),
        // The CPU backend's formulas (`cpu/gelu.rs`), in f64.
        UnaryOp::Gelu | UnaryOp::GeluDerivative => {
            let (c, a) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
            let t = (c * (x + a * x * x * x)).tanh();
            if op == UnaryOp::Gelu {
                0.5 * x * (1.0 + t)
            } else {
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * a * x * x)
            }
        }
        UnaryOp::GeluExact => 0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)),
        UnaryOp::GeluExactDerivative => {
            let phi = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            0.5 * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)) + x * phi
        }
        UnaryOp::Not => unreachable!(),
    }
}

fn unary_int_ref(op: UnaryOp, d: KernelDType, x: i64) -> i64 {
    let v = match op {
        UnaryOp::Neg => x.wrapping_neg(),
        UnaryOp::Abs => x.wrapping_abs(),
        UnaryOp::Sign => x.signum(),
        UnaryOp::Relu => x.max(0),
        UnaryOp::Not => (x == 0) as i64,
        _ => unreachable!(),
    };
    wrap_int(d, v)
}

#[test]
fn unary_kernels_match_the_references() {
    if !available() {
        return;
    }
    for spec in catalogue() {
        let KernelSpec::Unary(u) = spec else { continue };
        let d = u.dtype();
        let (vals, want) = if d.is_float() {
            let xs = float_inputs(d);
            let want = xs.iter().map(|&x| quantize(d, unary_float_ref(u.op(), x))).collect();
            (Vals::F(xs), Vals::F(want))
        } else {
            let xs = int_inputs(d);
            let want = xs.iter().map(|&x| unary_int_ref(u.op(), d, x)).collect();
            (Vals::I(xs), Vals::I(want))
        };
        let n = vals.len();
        let mut args = vec![Arg::zeros(n * d.size_in_bytes())];
        args.extend(elementwise_input(d, &vals, u.variant()));
        args.push(Arg::i64(n as i64));
        let out = launch_1d(&spec, args);
        let exact = matches!(u.op(), UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Relu);
        // GELU's `1 + tanh` and `1 + erf` cancel for negative inputs (about 80x at -2.5) in the
        // compute type; halves round that result once, within their own tolerance.
        let gelu = matches!(
            u.op(),
            UnaryOp::Gelu | UnaryOp::GeluDerivative | UnaryOp::GeluExact | UnaryOp::GeluExactDerivative
        );
        let rel = if exact {
            0.0
        } else if gelu && matches!(d, F32 | F64) {
            tol(d) * 64.0
        } else {
            tol(d)
        };
        assert_vals(
            &spec.entry_name(),
            &Vals::decode(d, out[0].as_ref().unwrap()),
            &want,
            rel,
        );
    }
}

fn binary_float_ref(op: BinaryOp, a: f64, b: f64) -> f64 {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Pow => a.powf(b),
        BinaryOp::Maximum => {
            if a.is_nan() || a >= b {
                a
            } else {
                b
            }
        }
        BinaryOp::Minimum => {
            if a.is_nan() || a <= b {
                a
            } else {
                b
            }
        }
        _ => unreachable!(),
    }
}

/// The CPU backend's integer semantics in the width of `d` (`None`: a device error, result 0).
fn binary_int_ref(op: BinaryOp, d: KernelDType, a: i64, b: i64) -> Option<i64> {
    if d == Bool {
        let (a, b) = (a != 0, b != 0);
        return Some(match op {
            BinaryOp::And | BinaryOp::Mul | BinaryOp::Minimum => a & b,
            BinaryOp::Or | BinaryOp::Add | BinaryOp::Maximum => a | b,
            BinaryOp::Xor => a ^ b,
            _ => unreachable!(),
        } as i64);
    }
    let v = match op {
        BinaryOp::Add => a.wrapping_add(b),
        BinaryOp::Sub => a.wrapping_sub(b),
        BinaryOp::Mul => a.wrapping_mul(b),
        BinaryOp::Maximum => a.max(b),
        BinaryOp::Minimum => a.min(b),
        BinaryOp::Div => {
            if b == 0 {
                return None;
            }
            if b == -1 {
                a.wrapping_neg()
            } else {
                a.div_euclid(b) - if b < 0 && a.rem_euclid(b) != 0 { 1 } else { 0 }
            }
        }
        BinaryOp::Pow => {
            if b < 0 {
                return None;
            }
            let e = b.min(u32::MAX as i64) as u32;
            match d {
                I64 => a.wrapping_pow(e),
                I32 => (a as i32).wrapping_pow(e) as i64,
                U8 => (a as u8).wrapping_pow(e) as i64,
                _ => unreachable!(),
            }
        }
        _ => unreachable!(),
    };
    Some(wrap_int(d, v))
}

#[test]
fn binary_kernels_match_the_references() {
    if !available() {
        return;
    }
    for spec in catalogue() {
        let KernelSpec::Binary(bs) = spec else { continue };
        let (op, d) = (bs.op(), bs.dtype());
        // Every pair of a row of `a` values and a row of `b` values.
        let (av, bv) = if d.is_float() {
            let a = [-2.5, -0.0, 0.0, 1.5, 3.0, f64::NAN, f64::INFINITY];
            let b = [2.0, -0.5, 0.0, f64::NAN, f64::NEG_INFINITY, 1.5];
            (
                Vals::F(a.iter().map(|&x| quantize(d, x)).collect()),
                Vals::F(b.iter().map(|&x| quantize(d, x)).collect()),
            )
        } else if d == Bool {
            (Vals::I(vec![0, 1]), Vals::I(vec![0, 1, 1]))
        } else {
            let b: Vec<i64> = [2, -3, 1, -1, 3, 0, 65].iter().map(|&v| wrap_int(d, v)).collect();
            (Vals::I(int_inputs(d)), Vals::I(b))
        };
        let (na, nb) = (av.len(), bv.len());
        let n = na * nb;
        let mut want_errors = false;
        let want = match (&av, &bv) {
            (Vals::F(a), Vals::F(b)) => Vals::F(
                a.iter()
                    .flat_map(|&x| b.iter().map(move |&y| quantize(d, binary_float_ref(op, x, y))))
                    .collect(),
            ),
            (Vals::I(a), Vals::I(b)) => Vals::I(
                a.iter()
                    .flat_map(|&x| b.iter().map(move |&y| (x, y)))
                    .map(|(x, y)| {
                        binary_int_ref(op, d, x, y).unwrap_or_else(|| {
                            want_errors = true;
                            0
                        })
                    })
                    .collect(),
            ),
            _ => unreachable!(),
        };
        let mut args = vec![Arg::zeros(n * d.size_in_bytes())];
        match bs.variant() {
            // Broadcast views: a along the columns, b along the rows.
            Variant::Strided => {
                args.push(Arg::Buf(av.encode(d)));
                args.push(Arg::layout(&KernelLayout::new(&[na, nb], &[1, 0], 0).unwrap()));
                args.push(Arg::Buf(bv.encode(d)));
                args.push(Arg::layout(&KernelLayout::new(&[na, nb], &[0, 1], 0).unwrap()));
            }
            Variant::Contiguous => {
                let (a2, b2) = match (&av, &bv) {
                    (Vals::F(a), Vals::F(b)) => (
                        Vals::F(a.iter().flat_map(|&x| b.iter().map(move |_| x)).collect()),
                        Vals::F(a.iter().flat_map(|_| b.iter().copied()).collect()),
                    ),
                    (Vals::I(a), Vals::I(b)) => (
                        Vals::I(a.iter().flat_map(|&x| b.iter().map(move |_| x)).collect()),
                        Vals::I(a.iter().flat_map(|_| b.iter().copied()).collect()),
                    ),
                    _ => unreachable!(),
                };
                args.push(Arg::Buf(a2.encode(d)));
                args.push(Arg::Buf(b2.encode(d)));
            }
        }
        args.push(Arg::i64(n as i64));
        args.push(Arg::err());
        let out = launch_1d(&spec, args);
        let name = spec.entry_name();
        let rel = if matches!(op, BinaryOp::Pow | BinaryOp::Div) {
            tol(d)
        } else {
            0.0
        };
        // Products and sums of f16/bf16 values are computed in float and rounded once.
        let rel = if matches!(d, F16 | BF16) { tol(d) } else { rel };
        assert_vals(&name, &Vals::decode(d, out[0].as_ref().unwrap()), &want, rel);
        let rec = error_record(out.last().unwrap().as_ref().unwrap());
        let want_code = match op {
            BinaryOp::Div => DeviceErrorKind::IntegerDivisionByZero.code(),
            _ => DeviceErrorKind::NegativeIntegerExponent.code(),
        };
        assert_eq!(
            rec[0],
            if want_errors { want_code } else { 0 },
            "{name}: error record {rec:?}"
        );
    }
}

#[test]
fn integer_errors_name_the_value() {
    if !available() {
        return;
    }
    let div: KernelSpec = BinarySpec::new(BinaryOp::Div, I64, Variant::Contiguous).unwrap().into();
    let out = launch_1d(
        &div,
        vec![
            Arg::zeros(16),
            Arg::Buf(encode_i(I64, &[7, -9])),
            Arg::Buf(encode_i(I64, &[2, 0])),
            Arg::i64(2),
            Arg::err(),
        ],
    );
    assert_eq!(decode_i(I64, out[0].as_ref().unwrap()), [3, 0]);
    let rec = error_record(out[4].as_ref().unwrap());
    let e = DeviceError::decode(&rec).unwrap().unwrap();
    assert_eq!((e.kind, e.value), (DeviceErrorKind::IntegerDivisionByZero, -9));
    let pow: KernelSpec = BinarySpec::new(BinaryOp::Pow, I32, Variant::Contiguous).unwrap().into();
    let out = launch_1d(
        &pow,
        vec![
            Arg::zeros(4),
            Arg::Buf(encode_i(I32, &[3])),
            Arg::Buf(encode_i(I32, &[-2])),
            Arg::i64(1),
            Arg::Null,
        ],
    );
    assert_eq!(decode_i(I32, out[0].as_ref().unwrap()), [0]);
}

#[test]
fn compare_and_select_kernels_match_the_references() {
    if !available() {
        return;
    }
    for spec in catalogue() {
        let name = spec.entry_name();
        match spec {
            KernelSpec::Compare(c) => {
                let d = c.dtype();
                let (a, b) = if d.is_float() {
                    let a = [1.0, 2.0, -0.0, f64::NAN, 1.0, f64::INFINITY];
                    let b = [1.0, 1.0, 0.0, 1.0, f64::NAN, f64::INFINITY];
                    (Vals::F(a.to_vec()), Vals::F(b.to_vec()))
                } else if d == Bool {
                    (Vals::I(vec![0, 0, 1, 1]), Vals::I(vec![0, 1, 0, 1]))
                } else {
                    let a: Vec<i64> = int_inputs(d);
                    let b: Vec<i64> = a.iter().rev().copied().collect();
                    (Vals::I(a), Vals::I(b))
                };
                let pairs: Vec<(f64, f64)> = match (&a, &b) {
                    (Vals::F(a), Vals::F(b)) => a.iter().copied().zip(b.iter().copied()).collect(),
                    (Vals::I(a), Vals::I(b)) => a.iter().map(|&v| v as f64).zip(b.iter().map(|&v| v as f64)).collect(),
                    _ => unreachable!(),
                };
                let want: Vec<i64> = pairs
                    .iter()
                    .map(|&(x, y)| match c.op() {
                        CmpOp::Eq => x == y,
                        CmpOp::Ne => x != y,
                        CmpOp::Lt => x < y,
                        CmpOp::Le => x <= y,
                        CmpOp::Gt => x > y,
                        CmpOp::Ge => x >= y,
                    } as i64)
                    .collect();
                let n = a.len();
                let mut args = vec![Arg::zeros(n)];
                args.extend(elementwise_input(d, &a, c.variant()));
                args.extend(elementwise_input(d, &b, c.variant()));
                args.push(Arg::i64(n as i64));
                let out = launch_1d(&spec, args);
                assert_eq!(decode_i(Bool, out[0].as_ref().unwrap()), want, "{name}");
            }
            KernelSpec::Select(s) => {
                let d = s.dtype();
                let (a, b) = if d.is_float() {
                    (
                        Vals::F(vec![1.5, -2.0, f64::NAN, 4.0]),
                        Vals::F(vec![-1.0, 8.0, 0.5, f64::INFINITY]),
                    )
                } else if d == Bool {
                    (Vals::I(vec![1, 1, 0, 0]), Vals::I(vec![0, 1, 1, 0]))
                } else {
                    (Vals::I(vec![1, 2, 3, 4]), Vals::I(vec![10, 20, 30, 40]))
                };
                let cond = Vals::I(vec![1, 0, 0, 1]);
                let want = match (&a, &b) {
                    (Vals::F(a), Vals::F(b)) => Vals::F(vec![a[0], b[1], b[2], a[3]]),
                    (Vals::I(a), Vals::I(b)) => Vals::I(vec![a[0], b[1], b[2], a[3]]),
                    _ => unreachable!(),
                };
                let mut args = vec![Arg::zeros(4 * d.size_in_bytes())];
                args.extend(elementwise_input(Bool, &cond, s.variant()));
                args.extend(elementwise_input(d, &a, s.variant()));
                args.extend(elementwise_input(d, &b, s.variant()));
                args.push(Arg::i64(4));
                let out = launch_1d(&spec, args);
                assert_vals(&name, &Vals::decode(d, out[0].as_ref().unwrap()), &want, 0.0);
            }
            _ => {}
        }
    }
}

/// The CPU backend's cast of value `v` of dtype `from` (as f64 for floats, exact i64 for
/// integers) to `to`.
fn cast_ref(from: KernelDType, to: KernelDType, f: f64, i: i64) -> (f64, i64) {
    if to.is_float() {
        let x = if from.is_float() { f } else { i as f64 };
        (quantize(to, x), 0)
    } else if to == Bool {
        let nz = if from.is_float() { f != 0.0 } else { i != 0 };
        (0.0, nz as i64)
    } else if from.is_float() {
        (0.0, f64_to_int(to, f))
    } else {
        (0.0, wrap_int(to, i))
    }
}

#[test]
fn cast_kernels_follow_the_cpu_semantics() {
    if !available() {
        return;
    }
    let floats = [
        0.0,
        -0.0,
        1.5,
        -1.5,
        2.5,
        -2.5,
        255.5,
        256.0,
        -1.0,
        65504.0,
        65520.0,
        1e10,
        -1e10,
        3e38,
        1e-8,
        0.1,
        1.0 / 3.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
    ];
    let ints = [
        0,
        1,
        -1,
        127,
        128,
        255,
        256,
        -129,
        1 << 31,
        -(1 << 31) - 1,
        (1 << 53) + 1,
        (1 << 24) + 1,
        i64::MAX,
        i64::MIN,
    ];
    for spec in catalogue() {
        let KernelSpec::Cast(c) = spec else { continue };
        let (from, to) = (c.from(), c.to());
        let input = if from.is_float() {
            Vals::F(floats.iter().map(|&x| quantize(from, x)).collect())
        } else {
            Vals::I(ints.iter().map(|&v| wrap_int(from, v)).collect())
        };
        let refs: Vec<(f64, i64)> = match &input {
            Vals::F(v) => v.iter().map(|&x| cast_ref(from, to, x, 0)).collect(),
            Vals::I(v) => v.iter().map(|&i| cast_ref(from, to, 0.0, i)).collect(),
        };
        let want = if to.is_float() {
            Vals::F(refs.iter().map(|r| r.0).collect())
        } else {
            Vals::I(refs.iter().map(|r| r.1).collect())
        };
        let n = input.len();
        let mut args = vec![Arg::zeros(n * to.size_in_bytes())];
        args.extend(elementwise_input(from, &input, c.variant()));
        args.push(Arg::i64(n as i64));
        let out = launch_1d(&spec, args);
        assert_vals(
            &spec.entry_name(),
            &Vals::decode(to, out[0].as_ref().unwrap()),
            &want,
            0.0,
        );
    }
}

#[test]
fn fill_copy_concat_and_embed() {
    if !available() {
        return;
    }
    for d in KernelDType::ALL {
        // fill: the value converts as a cast from f64.
        for value in [2.7, -1e30, f64::NAN, -0.0, 300.0] {
            let spec: KernelSpec = FillSpec::new(d).unwrap().into();
            let out = launch_1d(
                &spec,
                vec![Arg::zeros(5 * d.size_in_bytes()), Arg::i64(5), Arg::f64(value)],
            );
            let (f, i) = cast_ref(F64, d, value, 0);
            let want = if d.is_float() {
                Vals::F(vec![f; 5])
            } else {
                Vals::I(vec![i; 5])
            };
            assert_vals(
                &spec.entry_name(),
                &Vals::decode(d, out[0].as_ref().unwrap()),
                &want,
                0.0,
            );
        }
        // arange: start + i * step in double, converted as a cast from f64.
        if d != Bool {
            for (start, step) in [(0.0, 1.0), (-2.5, 0.1), (7.0, -3.0), (1e6, 0.7)] {
                let spec: KernelSpec = ArangeSpec::new(d).unwrap().into();
                let out = launch_1d(
                    &spec,
                    vec![
                        Arg::zeros(9 * d.size_in_bytes()),
                        Arg::i64(9),
                        Arg::f64(start),
                        Arg::f64(step),
                    ],
                );
                let cast: Vec<(f64, i64)> = (0..9).map(|i| cast_ref(F64, d, start + i as f64 * step, 0)).collect();
                let want = if d.is_float() {
                    Vals::F(cast.iter().map(|c| c.0).collect())
                } else {
                    Vals::I(cast.iter().map(|c| c.1).collect())
                };
                assert_vals(
                    &spec.entry_name(),
                    &Vals::decode(d, out[0].as_ref().unwrap()),
                    &want,
                    0.0,
                );
            }
        }
        // copy: a [3, 4] transposed view of a [4, 3] buffer.
        let buf: Vec<i64> = (0..12).map(|v| wrap_int(d, v % 2 + v / 2)).collect();
        let vals = if d.is_float() {
            Vals::F(buf.iter().map(|&v| v as f64).collect())
        } else {
            Vals::I(buf.clone())
        };
        let l = KernelLayout::new(&[3, 4], &[1, 3], 0).unwrap();
        let spec: KernelSpec = CopySpec::new(d).unwrap().into();
        let out = launch_1d(
            &spec,
            vec![
                Arg::zeros(12 * d.size_in_bytes()),
                Arg::Buf(vals.encode(d)),
                Arg::layout(&l),
                Arg::i64(12),
            ],
        );
        let got = Vals::decode(d, out[0].as_ref().unwrap());
        let want_i: Vec<i64> = (0..12).map(|k| buf[l.offset_of(k) as usize]).collect();
        let want = if d.is_float() {
            Vals::F(want_i.iter().map(|&v| v as f64).collect())
        } else {
            Vals::I(want_i)
        };
        assert_vals(&spec.entry_name(), &got, &want, 0.0);

        // concat along axis 1: x0 [2, 3, 2] (strided: read transposed), x1 [2, 1, 2], into [2, 4, 2].
        let x0: Vec<i64> = (1..=12).map(|v| wrap_int(d, v)).collect();
        let x1: Vec<i64> = vec![wrap_int(d, 100), wrap_int(d, 101), wrap_int(d, 102), wrap_int(d, 103)];
        let as_vals = |v: &[i64]| {
            if d.is_float() {
                Vals::F(v.iter().map(|&x| x as f64).collect())
            } else {
                Vals::I(v.to_vec())
            }
        };
        let mut out_bytes = vec![0u8; 16 * d.size_in_bytes()];
        for (variant, x, at, ext) in [
            (Variant::Strided, &x0, 0usize, 3usize),
            (Variant::Contiguous, &x1, 3, 1),
        ] {
            let spec: KernelSpec = ConcatSpec::new(d, variant).unwrap().into();
            let slot = ConcatSlot::new(&[2, ext, 2], 1, at, 4);
            let mut args = vec![Arg::Buf(out_bytes.clone())];
            if variant == Variant::Strided {
                // The buffer holds x0 in [2, 2, 3] order (last two axes swapped).
                let mut t = vec![0i64; 12];
                for b in 0..2 {
                    for j in 0..3 {
                        for q in 0..2 {
                            t[b * 6 + q * 3 + j] = x[b * 6 + j * 2 + q];
                        }
                    }
                }
                args.push(Arg::Buf(as_vals(&t).encode(d)));
                args.push(Arg::layout(&KernelLayout::new(&[2, 3, 2], &[6, 1, 3], 0).unwrap()));
            } else {
                args.push(Arg::Buf(as_vals(x).encode(d)));
            }
            args.extend([
                Arg::i64(x.len() as i64),
                Arg::i64(slot.slot_len),
                Arg::i64(slot.out_row),
                Arg::i64(slot.slot_start),
            ]);
            out_bytes = launch_1d(&spec, args)[0].clone().unwrap();
        }
        let mut want = Vec::new();
        for b in 0..2 {
            want.extend_from_slice(&x0[b * 6..b * 6 + 6]);
            want.extend_from_slice(&x1[b * 2..b * 2 + 2]);
        }
        assert_vals(
            &format!("nb_concat_{d}"),
            &Vals::decode(d, &out_bytes),
            &as_vals(&want),
            0.0,
        );

        // embed: x [2, 2] into zeros [5, 6] at rows 1, 3 and columns 0, 3.
        let spec: KernelSpec = EmbedSpec::new(d).unwrap().into();
        let target = KernelLayout::embed_target(&[5, 6], &[2, 2], &[1, 0], &[2, 3]).unwrap();
        let x: Vec<i64> = (1..=4).map(|v| wrap_int(d, v)).collect();
        let out = launch_1d(
            &spec,
            vec![
                Arg::zeros(30 * d.size_in_bytes()),
                Arg::layout(&target),
                Arg::Buf(as_vals(&x).encode(d)),
                Arg::layout(&KernelLayout::contiguous(&[2, 2]).unwrap()),
                Arg::i64(4),
            ],
        );
        let mut want = vec![0i64; 30];
        for (k, pos) in [6, 9, 18, 21].into_iter().enumerate() {
            want[pos] = x[k];
        }
        assert_vals(
            &spec.entry_name(),
            &Vals::decode(d, out[0].as_ref().unwrap()),
            &as_vals(&want),
            0.0,
        );
    }
}

// ---- reductions ----------------------------------------------------------------------

/// Deterministic pseudo-random numbers in [0, 1).
fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

fn reduce_input(op: ReduceOp, d: KernelDType, n: usize, seed: u64) -> Vals {
    let r = noise(n, seed);
    if d.is_float() {
        let v = r.iter().map(|&u| match op {
            ReduceOp::Prod => 0.9 + 0.2 * u,
            _ => 4.0 * u - 2.0,
        });
        Vals::F(v.map(|x| quantize(d, x)).collect())
    } else {
        let v = r.iter().map(|&u| match d {
            Bool => (u < 0.5) as i64,
            U8 => (u * 256.0) as i64,
            _ if op == ReduceOp::Prod => (u * 7.0) as i64 - 3,
            _ => wrap_int(d, ((u - 0.5) * 2e12) as i64),
        });
        Vals::I(v.collect())
    }
}

/// The CPU backend's fold of `xs` (f64 for floats; wrapping in the dtype's width for integers).
fn fold_ref(op: ReduceOp, d: KernelDType, xs: &Vals) -> (f64, i64) {
    match xs {
        Vals::F(v) => {
            let f = v.iter().fold(
                match op {
                    ReduceOp::Sum => 0.0,
                    ReduceOp::Prod => 1.0,
                    ReduceOp::Max => f64::NEG_INFINITY,
                    ReduceOp::Min => f64::INFINITY,
                },
                |a, &b| match op {
                    ReduceOp::Sum => a + b,
                    ReduceOp::Prod => a * b,
                    ReduceOp::Max => {
                        if a.is_nan() || a >= b {
                            a
                        } else {
                            b
                        }
                    }
                    ReduceOp::Min => {
                        if a.is_nan() || a <= b {
                            a
                        } else {
                            b
                        }
                    }
                },
            );
            (quantize(d, f), 0)
        }
        Vals::I(v) => {
            let i = match (op, d) {
                (ReduceOp::Sum | ReduceOp::Max, Bool) => v.iter().any(|&x| x != 0) as i64,
                (ReduceOp::Prod | ReduceOp::Min, Bool) => v.iter().all(|&x| x != 0) as i64,
                (ReduceOp::Sum, _) => v.iter().fold(0i64, |a, &b| a.wrapping_add(b)),
                (ReduceOp::Prod, _) => v.iter().fold(1i64, |a, &b| a.wrapping_mul(b)),
                (ReduceOp::Max, _) => v.iter().copied().max().unwrap_or(match d {
                    I64 => i64::MIN,
                    I32 => i32::MIN as i64,
                    _ => 0,
                }),
                (ReduceOp::Min, _) => v.iter().copied().min().unwrap_or(match d {
                    I64 => i64::MAX,
                    I32 => i32::MAX as i64,
                    _ => 255,
                }),
            };
            (0.0, wrap_int(d, i))
        }
    }
}

fn select_vals(v: &Vals, idx: &[usize]) -> Vals {
    match v {
        Vals::F(x) => Vals::F(idx.iter().map(|&k| x[k]).collect()),
        Vals::I(x) => Vals::I(idx.iter().map(|&k| x[k]).collect()),
    }
}

/// Runs a reduction of `buf` (viewed as `shape`/`strides`) over `axes` with the given group and
/// splits (1: the single-pass kernel; more: partial then finish).
fn run_reduce(
    op: ReduceOp,
    d: KernelDType,
    buf: &Vals,
    view: (&[usize], &[isize]),
    axes: &[usize],
    group: u32,
    splits: i64,
) -> Vals {
    let r = ReduceLayouts::new(view.0, view.1, 0, axes).unwrap();
    let block = if group > 32 { group } else { 64 };
    let out_bytes = r.n_out as usize * d.size_in_bytes();
    if splits == 1 {
        let spec: KernelSpec = ReduceSpec::new(op, d, ReduceStage::Single).unwrap().into();
        let out = run(
            &spec,
            2,
            block,
            vec![
                Arg::zeros(out_bytes),
                Arg::Buf(buf.encode(d)),
                Arg::layout(&r.outer),
                Arg::layout(&r.inner),
                Arg::i64(r.n_out),
                Arg::i64(r.n_red),
                Arg::i32(group as i32),
            ],
        );
        return Vals::decode(d, out[0].as_ref().unwrap());
    }
    let partial = ReduceSpec::new(op, d, ReduceStage::Partial).unwrap();
    let acc = partial.acc_type().size_in_bytes();
    let out = run(
        &partial.into(),
        2,
        block,
        vec![
            Arg::zeros(r.n_out as usize * splits as usize * acc),
            Arg::Buf(buf.encode(d)),
            Arg::layout(&r.outer),
            Arg::layout(&r.inner),
            Arg::i64(r.n_out),
            Arg::i64(r.n_red),
            Arg::i64(splits),
            Arg::i32(group as i32),
        ],
    );
    let finish: KernelSpec = ReduceSpec::new(op, d, ReduceStage::Finish).unwrap().into();
    let out = run(
        &finish,
        2,
        64,
        vec![
            Arg::zeros(out_bytes),
            Arg::Buf(out[0].clone().unwrap()),
            Arg::i64(r.n_out),
            Arg::i64(splits),
            Arg::i32(4),
        ],
    );
    Vals::decode(d, out[0].as_ref().unwrap())
}

#[test]
fn reductions_match_the_cpu_fold_for_every_group_and_split() {
    if !available() {
        return;
    }
    // A [3, 5, 7] view of a [7, 5, 3] buffer (axes reversed).
    let shape = [3usize, 5, 7];
    let strides = [1isize, 3, 15];
    let offsets: Vec<usize> = (0..105)
        .map(|i| KernelLayout::new(&shape, &strides, 0).unwrap().offset_of(i) as usize)
        .collect();
    // Every plan for two dtypes; a warp group and a split block group for the others.
    let all_plans: &[(u32, i64)] = &[(1, 1), (4, 1), (32, 1), (64, 1), (32, 3), (128, 2)];
    let some_plans: &[(u32, i64)] = &[(4, 1), (128, 2)];
    for &op in ReduceOp::ALL {
        for d in KernelDType::ALL {
            let plans = if matches!(d, F32 | I64) { all_plans } else { some_plans };
            let buf = reduce_input(op, d, 105, (op as u64) * 10 + d as u64);
            for axes in [&[0usize, 2][..], &[1], &[0, 1, 2], &[2], &[]] {
                // The reference: every output's elements, in the logical order.
                let kept: Vec<usize> = (0..3).filter(|a| !axes.contains(a)).collect();
                let n_out: usize = kept.iter().map(|&a| shape[a]).product();
                let mut groups: Vec<Vec<usize>> = vec![Vec::new(); n_out];
                for (i, &off) in offsets.iter().enumerate() {
                    let idx = [i / 35, (i / 7) % 5, i % 7];
                    let o = kept.iter().fold(0, |acc, &a| acc * shape[a] + idx[a]);
                    groups[o].push(off);
                }
                let refs: Vec<(f64, i64)> = groups.iter().map(|g| fold_ref(op, d, &select_vals(&buf, g))).collect();
                let want = if d.is_float() {
                    Vals::F(refs.iter().map(|r| r.0).collect())
                } else {
                    Vals::I(refs.iter().map(|r| r.1).collect())
                };
                for &(group, splits) in plans {
                    let got = run_reduce(op, d, &buf, (&shape, &strides), axes, group, splits);
                    let what = format!("reduce {op} {d} over {axes:?} (group {group}, splits {splits})");
                    let rel = if matches!(op, ReduceOp::Max | ReduceOp::Min) {
                        0.0
                    } else {
                        tol(d) * 4.0
                    };
                    assert_vals(&what, &got, &want, rel);
                }
            }
        }
    }
}

#[test]
fn reductions_propagate_nan_and_handle_empty_axes() {
    if !available() {
        return;
    }
    // [2, 6]: a NaN in row 0 only; max/min/sum of row 0 are NaN.
    let x = vec![1.0, f64::NAN, 3.0, -1.0, 2.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    for op in [ReduceOp::Max, ReduceOp::Min, ReduceOp::Sum] {
        for d in [F32, BF16, F64] {
            for (group, splits) in [(1, 1), (32, 1), (256, 1), (4, 2)] {
                let got = run_reduce(op, d, &Vals::F(x.clone()), (&[2, 6], &[6, 1]), &[1], group, splits);
                let Vals::F(g) = got else { unreachable!() };
                assert!(g[0].is_nan(), "{op} {d}: {g:?}");
                let want = match op {
                    ReduceOp::Max => 6.0,
                    ReduceOp::Min => 1.0,
                    _ => 21.0,
                };
                assert_eq!(g[1], want, "{op} {d}");
            }
        }
    }
    // Sum and product over an empty axis give the identity.
    for (op, want) in [(ReduceOp::Sum, 0.0), (ReduceOp::Prod, 1.0)] {
        let got = run_reduce(op, F32, &Vals::F(vec![]), (&[3, 0], &[0, 1]), &[1], 32, 1);
        let Vals::F(g) = got else { unreachable!() };
        assert_eq!(g, vec![want; 3]);
    }
}

#[test]
fn arg_reductions_pick_the_first_extremum_as_the_cpu_scan() {
    if !available() {
        return;
    }
    // Rows of 9 (viewed transposed: the buffer is [9, 5]).
    let rows: Vec<Vec<f64>> = vec![
        vec![f64::NAN, 5.0, 1.0, 9.0, 2.0, 9.0, 0.0, -1.0, 3.0], // NaN first: index 0
        vec![1.0, 5.0, f64::NAN, 9.0, 2.0, 9.0, 0.0, -1.0, 3.0], // later NaN skipped
        vec![2.0; 9],                                            // all equal: 0
        vec![0.0, 1.0, 7.0, 1.0, 7.0, -3.0, -3.0, 7.0, 1.0],     // ties: first
        vec![-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0, -8.0, -9.0],
    ];
    let scan = |r: &[f64], max: bool| {
        let mut best = 0;
        for i in 1..r.len() {
            if (max && r[i] > r[best]) || (!max && r[i] < r[best]) {
                best = i;
            }
        }
        best as i64
    };
    for &op in ArgOp::ALL {
        for d in KernelDType::ALL {
            let vals: Vec<Vec<f64>> = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|&x| match d {
                            _ if d.is_float() => quantize(d, x),
                            Bool => (x > 1.5) as i64 as f64,
                            U8 => {
                                if x.is_nan() {
                                    4.0
                                } else {
                                    (x + 9.0).max(0.0)
                                }
                            }
                            _ => {
                                if x.is_nan() {
                                    4.0
                                } else {
                                    x
                                }
                            }
                        })
                        .collect()
                })
                .collect();
            let want: Vec<i64> = vals.iter().map(|r| scan(r, op == ArgOp::ArgMax)).collect();
            // Buffer [9, 5]: element (row, k) at k * 5 + row.
            let mut buf = vec![0.0; 45];
            for (row, r) in vals.iter().enumerate() {
                for (k, &x) in r.iter().enumerate() {
                    buf[k * 5 + row] = x;
                }
            }
            let input = if d.is_float() {
                Vals::F(buf)
            } else {
                Vals::I(buf.iter().map(|&x| x as i64).collect())
            };
            let spec: KernelSpec = ArgReduceSpec::new(op, d).unwrap().into();
            let outer = KernelLayout::new(&[5], &[1], 0).unwrap();
            for group in [1u32, 4, 32, 256] {
                let block = if group > 32 { group } else { 64 };
                let out = run(
                    &spec,
                    2,
                    block,
                    vec![
                        Arg::zeros(40),
                        Arg::Buf(input.encode(d)),
                        Arg::layout(&outer),
                        Arg::i64(5),
                        Arg::i64(9),
                        Arg::i64(5),
                        Arg::i32(group as i32),
                    ],
                );
                assert_eq!(
                    decode_i(I64, out[0].as_ref().unwrap()),
                    want,
                    "{} group {group}",
                    spec.entry_name()
                );
            }
        }
    }
}

// ---- indexing ------------------------------------------------------------------------

#[test]
fn gather_and_scatter_add_check_indices_on_the_device() {
    if !available() {
        return;
    }
    let (bn, p, n, q, count) = (2usize, 2usize, 5usize, 3usize, 4usize);
    let idx = [0i64, -1, 3, 3, 4, 2, -5, 2];
    let wrapped: Vec<usize> = idx
        .iter()
        .map(|&j| if j < 0 { (j + n as i64) as usize } else { j as usize })
        .collect();
    let x: Vec<i64> = (0..(bn * p * n * q) as i64).map(|v| v % 50).collect();
    let dims = |wrap: i32| {
        vec![
            Arg::i64(bn as i64),
            Arg::i64(p as i64),
            Arg::i64(n as i64),
            Arg::i64(q as i64),
            Arg::i64(count as i64),
            Arg::i32(wrap),
            Arg::err(),
        ]
    };
    for d in KernelDType::ALL {
        let as_vals = |v: &[i64]| {
            let v: Vec<i64> = v.iter().map(|&x| wrap_int(d, x)).collect();
            if d.is_float() {
                Vals::F(v.iter().map(|&x| x as f64).collect())
            } else {
                Vals::I(v)
            }
        };
        let spec: KernelSpec = GatherSpec::new(d).unwrap().into();
        let total = bn * p * count * q;
        let mut args = vec![
            Arg::zeros(total * d.size_in_bytes()),
            Arg::Buf(as_vals(&x).encode(d)),
            Arg::Buf(encode_i(I64, &idx)),
        ];
        args.extend(dims(1));
        let out = launch_1d(&spec, args);
        let mut want = Vec::new();
        for b in 0..bn {
            for pp in 0..p {
                for k in 0..count {
                    let j = wrapped[b * count + k];
                    want.extend_from_slice(&x[((b * p + pp) * n + j) * q..][..q]);
                }
            }
        }
        assert_vals(
            &spec.entry_name(),
            &Vals::decode(d, out[0].as_ref().unwrap()),
            &as_vals(&want),
            0.0,
        );
        assert_eq!(error_record(out[9].as_ref().unwrap())[0], 0);

        // Without wrapping, -1 is out of range: reported, and its elements are zero.
        let mut args = vec![
            Arg::zeros(total * d.size_in_bytes()),
            Arg::Buf(as_vals(&x).encode(d)),
            Arg::Buf(encode_i(I64, &[0, 1, 2, 3, 4, 0, 1, 9])),
        ];
        args.extend(dims(0));
        let out = launch_1d(&spec, args);
        let e = DeviceError::decode(&error_record(out[9].as_ref().unwrap()))
            .unwrap()
            .unwrap();
        assert_eq!((e.kind, e.value, e.extent), (DeviceErrorKind::GatherIndex, 9, 5));
        let got = Vals::decode(d, out[0].as_ref().unwrap());
        let zero_at = |k: usize| match &got {
            Vals::F(v) => v[k] == 0.0,
            Vals::I(v) => v[k] == 0,
        };
        // Element (b = 1, p, k = 3, q) for every p and q is zero.
        for pp in 0..p {
            for qq in 0..q {
                assert!(zero_at(((p + pp) * count + 3) * q + qq));
            }
        }

        let Ok(sa) = ScatterAddSpec::new(d) else { continue };
        let spec: KernelSpec = sa.into();
        let base: Vec<i64> = (0..(bn * p * n * q) as i64).map(|v| v % 7).collect();
        let upd: Vec<i64> = (0..total as i64).map(|v| v % 5 + 1).collect();
        let mut args = vec![
            Arg::Buf(as_vals(&base).encode(d)),
            Arg::Buf(as_vals(&upd).encode(d)),
            Arg::Buf(encode_i(I64, &idx)),
        ];
        args.extend(dims(1));
        let out = run(&spec, 2, 64, args);
        let mut want = base.clone();
        for b in 0..bn {
            for pp in 0..p {
                for k in 0..count {
                    let j = wrapped[b * count + k];
                    for qq in 0..q {
                        want[((b * p + pp) * n + j) * q + qq] += upd[((b * p + pp) * count + k) * q + qq];
                    }
                }
            }
        }
        assert_vals(
            &spec.entry_name(),
            &Vals::decode(d, out[0].as_ref().unwrap()),
            &as_vals(&want),
            0.0,
        );
        // An index out of range is reported and its update skipped.
        let mut args = vec![
            Arg::Buf(as_vals(&base).encode(d)),
            Arg::Buf(as_vals(&upd).encode(d)),
            Arg::Buf(encode_i(I64, &[0, 1, 2, 3, 4, 0, 1, -6])),
        ];
        args.extend(dims(1));
        let out = run(&spec, 2, 64, args);
        let e = DeviceError::decode(&error_record(out[9].as_ref().unwrap()))
            .unwrap()
            .unwrap();
        assert_eq!((e.kind, e.value, e.extent), (DeviceErrorKind::ScatterIndex, -6, 5));
    }
}

// ---- fused ---------------------------------------------------------------------------

fn rows_input(d: KernelDType, rows: usize, cols: usize, seed: u64) -> Vec<f64> {
    let mut x: Vec<f64> = noise(rows * cols, seed)
        .iter()
        .map(|&u| quantize(d, 8.0 * u - 4.0))
        .collect();
    // Row 1 has -inf entries, row 2 is all -inf.
    x[cols] = f64::NEG_INFINITY;
    x[cols + 2] = f64::NEG_INFINITY;
    for v in &mut x[2 * cols..3 * cols] {
        *v = f64::NEG_INFINITY;
    }
    x
}

/// The layer norm's `eps` in the row-kernel test.
const EPS: f64 = 1e-5;

/// Queries per matrix in the causal softmax rows of the row-kernel test (rows 0, 1, 2, then
/// 0, 1 again).
const CAUSAL_LQ: usize = 3;

/// The mean and `1 / sqrt(var + EPS)` of a row.
fn row_moments(r: &[f64]) -> (f64, f64) {
    let mean = r.iter().sum::<f64>() / r.len() as f64;
    let var = r.iter().map(|&v| (v - mean) * (v - mean)).sum::<f64>() / r.len() as f64;
    (mean, 1.0 / (var + EPS).sqrt())
}

/// The layer norm of every row of `x`, rounded to `d`.
fn layer_norm_reference(d: KernelDType, x: &[f64], cols: usize) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|r| {
            let (mean, rstd) = row_moments(r);
            r.iter()
                .map(move |&v| quantize(d, (v - mean) * rstd))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn softmax_and_layer_norm_rows_match_the_composition() {
    if !available() {
        return;
    }
    for &op in RowOp::ALL {
        for d in KernelDType::FLOATS {
            for (cols, group, block) in [(7usize, 4u32, 64u32), (7, 32, 64), (300, 256, 256), (300, 8, 64)] {
                let rows = 5;
                // The backward rows read the forward's output: softmax (or log-softmax) rows of
                // finite noise.
                let x = match op {
                    RowOp::SoftmaxBackward | RowOp::LogSoftmaxBackward => {
                        let log = op == RowOp::LogSoftmaxBackward;
                        let z: Vec<f64> = noise(rows * cols, cols as u64 + 3)
                            .iter()
                            .map(|&u| 8.0 * u - 4.0)
                            .collect();
                        z.chunks(cols)
                            .flat_map(|r| {
                                let lse = r.iter().map(|v| v.exp()).sum::<f64>().ln();
                                r.iter()
                                    .map(move |&v| quantize(d, if log { v - lse } else { (v - lse).exp() }))
                                    .collect::<Vec<_>>()
                            })
                            .collect()
                    }
                    _ => rows_input(d, rows, cols, cols as u64),
                };
                // The backward's cotangent, and its `y` (the forward's output, as stored).
                let v: Vec<f64> = noise(rows * cols, 11)
                    .iter()
                    .map(|&u| quantize(d, 2.0 * u - 1.0))
                    .collect();
                let y = layer_norm_reference(d, &x, cols);
                let mut want = Vec::new();
                for (row, r) in x.chunks(cols).enumerate() {
                    let m = r
                        .iter()
                        .fold(f64::NEG_INFINITY, |a, &b| if a.is_nan() || a >= b { a } else { b });
                    match op {
                        RowOp::Softmax => {
                            let s: f64 = r.iter().map(|&v| (v - m).exp()).sum();
                            want.extend(r.iter().map(|&v| quantize(d, (v - m).exp() / s)));
                        }
                        RowOp::CausalSoftmax => {
                            let keep = (row % CAUSAL_LQ + 1).min(cols);
                            let m = r[..keep]
                                .iter()
                                .fold(f64::NEG_INFINITY, |a, &b| if a.is_nan() || a >= b { a } else { b });
                            let s: f64 = r[..keep].iter().map(|&v| (v - m).exp()).sum();
                            want.extend(r[..keep].iter().map(|&v| quantize(d, (v - m).exp() / s)));
                            want.extend(std::iter::repeat_n(0.0, cols - keep));
                        }
                        RowOp::LogSoftmax => {
                            let shift = if m.is_finite() { m } else { 0.0 };
                            let lse = r.iter().map(|&v| (v - shift).exp()).sum::<f64>().ln() + shift;
                            want.extend(r.iter().map(|&v| quantize(d, v - lse)));
                        }
                        RowOp::LayerNorm => want.extend_from_slice(&y[row * cols..(row + 1) * cols]),
                        RowOp::LayerNormBackward => {
                            let (_, rstd) = row_moments(r);
                            let (vr, yr) = (&v[row * cols..(row + 1) * cols], &y[row * cols..(row + 1) * cols]);
                            let mv = vr.iter().sum::<f64>() / cols as f64;
                            let mvy = vr.iter().zip(yr).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
                            want.extend(vr.iter().zip(yr).map(|(&a, &b)| quantize(d, rstd * (a - mv - b * mvy))));
                        }
                        RowOp::SoftmaxBackward => {
                            let vr = &v[row * cols..(row + 1) * cols];
                            let s: f64 = r.iter().zip(vr).map(|(a, b)| a * b).sum();
                            want.extend(r.iter().zip(vr).map(|(&y, &g)| quantize(d, y * (g - s))));
                        }
                        RowOp::LogSoftmaxBackward => {
                            let vr = &v[row * cols..(row + 1) * cols];
                            let s: f64 = vr.iter().sum();
                            want.extend(r.iter().zip(vr).map(|(&y, &g)| quantize(d, g - y.exp() * s)));
                        }
                    }
                }
                let spec: KernelSpec = RowSpec::new(op, d).unwrap().into();
                let mut args = vec![
                    Arg::zeros(rows * cols * d.size_in_bytes()),
                    Arg::Buf(encode_f(d, &x)),
                    Arg::i64(rows as i64),
                    Arg::i64(cols as i64),
                ];
                if op == RowOp::LayerNormBackward {
                    args.push(Arg::Buf(encode_f(d, &y)));
                }
                if matches!(
                    op,
                    RowOp::LayerNormBackward | RowOp::SoftmaxBackward | RowOp::LogSoftmaxBackward
                ) {
                    args.push(Arg::Buf(encode_f(d, &v)));
                }
                if matches!(op, RowOp::LayerNorm | RowOp::LayerNormBackward) {
                    args.push(Arg::f64(EPS));
                }
                if op == RowOp::CausalSoftmax {
                    args.push(Arg::i64(CAUSAL_LQ as i64));
                }
                args.push(Arg::i32(group as i32));
                let out = run(&spec, 2, block, args);
                let got = Vals::decode(d, out[0].as_ref().unwrap());
                let what = format!("{} cols {cols} group {group}", spec.entry_name());
                match (op, &got) {
                    // Outputs near 0 come from a cancellation (x - mean, v - s): compared against
                    // the row's scale (about 1), not their own magnitude.
                    (
                        RowOp::LayerNorm
                        | RowOp::LayerNormBackward
                        | RowOp::SoftmaxBackward
                        | RowOp::LogSoftmaxBackward,
                        Vals::F(g),
                    ) => {
                        for (k, (a, b)) in g.iter().zip(&want).enumerate() {
                            let ok =
                                a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= tol(d) * 8.0 * (1.0 + b.abs());
                            assert!(ok, "{what}: element {k}: got {a:e}, want {b:e}");
                        }
                    }
                    _ => assert_vals(&what, &got, &Vals::F(want), tol(d) * 8.0),
                }
            }
        }
    }
}

#[test]
fn cross_entropy_rows_give_the_loss_and_its_gradient() {
    if !available() {
        return;
    }
    for d in KernelDType::FLOATS {
        for (cols, group, block) in [(6usize, 8u32, 64u32), (6, 32, 64), (2000, 256, 256)] {
            let rows = 4;
            let mut x: Vec<f64> = noise(rows * cols, 7)
                .iter()
                .map(|&u| quantize(d, 6.0 * u - 3.0))
                .collect();
            x[1] = f64::NEG_INFINITY;
            let labels = [2i64, 0, (cols - 1) as i64, 1];
            // The per-row cotangent.
            let g = [0.25, -1.0, 0.5, 2.0].map(|v| quantize(d, v));
            let mut loss = Vec::new();
            let mut grad = Vec::new();
            for (r, row) in x.chunks(cols).enumerate() {
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let lse = row.iter().map(|&v| (v - m).exp()).sum::<f64>().ln() + m;
                let l = labels[r] as usize;
                loss.push(quantize(d, lse - row[l]));
                grad.extend(
                    row.iter()
                        .enumerate()
                        .map(|(j, &v)| quantize(d, ((v - lse).exp() - (j == l) as i64 as f64) * g[r])),
                );
            }
            let spec: KernelSpec = CrossEntropySpec::new(d).unwrap().into();
            let args = |labels: &[i64], with_grad: bool, wrap: bool| {
                vec![
                    Arg::zeros(rows * d.size_in_bytes()),
                    if with_grad {
                        Arg::zeros(rows * cols * d.size_in_bytes())
                    } else {
                        Arg::Null
                    },
                    Arg::Buf(encode_f(d, &x)),
                    Arg::Buf(encode_i(I64, labels)),
                    if with_grad {
                        Arg::Buf(encode_f(d, &g))
                    } else {
                        Arg::Null
                    },
                    Arg::i64(rows as i64),
                    Arg::i64(cols as i64),
                    Arg::i32(wrap as i32),
                    Arg::i32(group as i32),
                    Arg::err(),
                ]
            };
            // Label -1 wraps to the last class (as the CPU's take_along_axis).
            let given = [2i64, 0, -1, 1];
            let out = run(&spec, 2, block, args(&given, true, true));
            let what = format!("{} cols {cols} group {group}", spec.entry_name());
            // Row 0's label is 2: a -inf logit elsewhere in it is fine.
            assert_vals(
                &what,
                &Vals::decode(d, out[0].as_ref().unwrap()),
                &Vals::F(loss.clone()),
                tol(d) * 8.0,
            );
            let got_grad = Vals::decode(d, out[1].as_ref().unwrap());
            let Vals::F(got) = &got_grad else { unreachable!() };
            for (k, (&v, &w)) in got.iter().zip(&grad).enumerate() {
                assert!(
                    (v - w).abs() <= tol(d) * 8.0 * w.abs().max(g[k / cols].abs()),
                    "{what}: grad {k}: {v} vs {w}"
                );
            }
            assert_eq!(error_record(out[9].as_ref().unwrap())[0], 0);
            // Without the gradient, and with a label out of range (row 3: NaN, reported).
            let out = run(&spec, 2, block, args(&[2, 0, 1, cols as i64], false, true));
            let Vals::F(l) = Vals::decode(d, out[0].as_ref().unwrap()) else {
                unreachable!()
            };
            assert!(l[3].is_nan() && close(l[1], loss[1], tol(d) * 8.0), "{what}: {l:?}");
            let e = DeviceError::decode(&error_record(out[9].as_ref().unwrap()))
                .unwrap()
                .unwrap();
            assert_eq!(
                (e.kind, e.value, e.extent),
                (DeviceErrorKind::LabelOutOfRange, cols as i64, cols as i64)
            );
            // Without wrapping, -1 is out of range.
            let out = run(&spec, 2, block, args(&given, false, false));
            let e = DeviceError::decode(&error_record(out[9].as_ref().unwrap()))
                .unwrap()
                .unwrap();
            assert_eq!((e.kind, e.value), (DeviceErrorKind::LabelOutOfRange, -1));
        }
    }
}

#[test]
fn adam_updates_in_place_like_the_cpu_optimiser() {
    if !available() {
        return;
    }
    for d in KernelDType::FLOATS {
        for (wd, decoupled) in [(0.0, false), (0.01, false), (0.01, true)] {
            let n = 37;
            let q = |v: Vec<f64>| -> Vec<f64> { v.into_iter().map(|x| quantize(d, x)).collect() };
            let p = q(noise(n, 1).iter().map(|&u| u - 0.5).collect());
            let m = q(noise(n, 2).iter().map(|&u| 0.1 * u).collect());
            let v = q(noise(n, 3).iter().map(|&u| 0.01 * u).collect());
            let g = q(noise(n, 4).iter().map(|&u| 2.0 * u - 1.0).collect());
            let (lr, b1, b2, eps, t) = (1e-2, 0.9f64, 0.999f64, 1e-8, 3i64);
            let (c1, c2) = (1.0 - b1.powf(t as f64), 1.0 - b2.powf(t as f64));
            let (mut wp, mut wm, mut wv) = (Vec::new(), Vec::new(), Vec::new());
            for k in 0..n {
                let gk = if wd != 0.0 && !decoupled {
                    g[k] + p[k] * wd
                } else {
                    g[k]
                };
                let m1 = m[k] * b1 + gk * (1.0 - b1);
                let v1 = v[k] * b2 + gk * gk * (1.0 - b2);
                let mut pk = p[k] - (m1 / c1) / ((v1 / c2).sqrt() + eps) * lr;
                if decoupled && wd != 0.0 {
                    pk -= p[k] * (lr * wd);
                }
                wp.push(quantize(d, pk));
                wm.push(quantize(d, m1));
                wv.push(quantize(d, v1));
            }
            let spec: KernelSpec = AdamSpec::new(d).unwrap().into();
            let out = launch_1d(
                &spec,
                vec![
                    Arg::zeros(3 * n * d.size_in_bytes()),
                    Arg::Buf(encode_f(d, &p)),
                    Arg::Buf(encode_f(d, &m)),
                    Arg::Buf(encode_f(d, &v)),
                    Arg::Buf(encode_f(d, &g)),
                    Arg::i64(n as i64),
                    Arg::f64(lr),
                    Arg::f64(b1),
                    Arg::f64(b2),
                    Arg::f64(eps),
                    Arg::f64(wd),
                    Arg::Buf(t.to_le_bytes().to_vec()),
                    Arg::i32(decoupled as i32),
                ],
            );
            let what = format!("{} wd {wd} decoupled {decoupled}", spec.entry_name());
            let rel = tol(d) * 16.0;
            let all = out[0].as_ref().unwrap();
            let row = all.len() / 3;
            assert_vals(&what, &Vals::decode(d, &all[..row]), &Vals::F(wp), rel);
            assert_vals(&what, &Vals::decode(d, &all[row..2 * row]), &Vals::F(wm), rel);
            assert_vals(&what, &Vals::decode(d, &all[2 * row..]), &Vals::F(wv), rel);
            // The inputs are read only.
            for (k, input) in [&p, &m, &v].into_iter().enumerate() {
                assert_eq!(
                    out[k + 1].as_deref(),
                    Some(&encode_f(d, input)[..]),
                    "{what}: input {k} written"
                );
            }
        }
    }
}

#[test]
fn the_reference_rounding_matches_known_half_values() {
    assert_eq!(round_bits(1.0, 10, 5), 0x3c00);
    assert_eq!(round_bits(65504.0, 10, 5), 0x7bff);
    assert_eq!(round_bits(65519.99, 10, 5), 0x7bff);
    assert_eq!(round_bits(65520.0, 10, 5), 0x7c00);
    assert_eq!(round_bits(1.0 / 3.0, 10, 5), 0x3555);
    assert_eq!(round_bits(5.960464477539063e-8, 10, 5), 0x0001);
    assert_eq!(round_bits(2.9e-8, 10, 5), 0x0000);
    assert_eq!(round_bits(-2.0, 10, 5), 0xc000);
    assert_eq!(round_bits(1.0, 7, 8), 0x3f80);
    assert_eq!(round_bits(1.00390625, 7, 8), 0x3f80); // a tie: to even
    assert_eq!(round_bits(1.01171875, 7, 8), 0x3f82); // a tie: to even (up)
    assert_eq!(round_bits(3.0e38, 7, 8), 0x7f62);
    assert_eq!(bits_value(0x7bff, 10, 5), 65504.0);
}

#[test]
fn index_checks_wrap_and_report_the_site() {
    if !available() {
        return;
    }
    let spec: KernelSpec = IndexCheckSpec::new().unwrap().into();
    let idx: Vec<i64> = vec![0, 4, -1, -5, 2];
    let bytes: Vec<u8> = idx.iter().flat_map(|v| v.to_le_bytes()).collect();
    let decode = |b: &[u8]| -> Vec<i64> { b.chunks(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect() };
    // Wrapping against extent 5: every index is accepted.
    let out = launch_1d(
        &spec,
        vec![
            Arg::zeros(40),
            Arg::Buf(bytes.clone()),
            Arg::i64(5),
            Arg::i64(5),
            Arg::i32(1),
            Arg::i64(7),
            Arg::err(),
        ],
    );
    assert_eq!(decode(out[0].as_ref().unwrap()), vec![0, 4, 4, 0, 2]);
    assert_eq!(error_record(out[6].as_ref().unwrap()), [0, 0, 0, 0]);
    // Without wrapping, against extent 4: 4, -1 and -5 are out; the first report wins, with
    // its site.
    let out = launch_1d(
        &spec,
        vec![
            Arg::zeros(40),
            Arg::Buf(bytes),
            Arg::i64(5),
            Arg::i64(4),
            Arg::i32(0),
            Arg::i64(7),
            Arg::err(),
        ],
    );
    assert_eq!(decode(out[0].as_ref().unwrap()), vec![0, 0, 0, 0, 2]);
    let record = error_record(out[6].as_ref().unwrap());
    let e = DeviceError::decode(&record).unwrap().unwrap();
    assert_eq!((e.kind, e.extent, e.site), (DeviceErrorKind::IndexOutOfRange, 4, 7));
    assert!([4, -1, -5].contains(&e.value), "{e:?}");
}

/// The CPU's uniform hash (nabla_core's `random::unit`), written again here.
fn unit_ref(key: u64, i: u64) -> f64 {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    (mix(key ^ mix(i.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1))) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[test]
fn random_uniform_draws_the_cpu_hash() {
    if !available() {
        return;
    }
    let key: u64 = 0xDEAD_BEEF_0123_4567;
    for d in KernelDType::FLOATS {
        let spec: KernelSpec = RandomUniformSpec::new(d).unwrap().into();
        let n = 1000;
        let out = launch_1d(
            &spec,
            vec![
                Arg::zeros(n * d.size_in_bytes()),
                Arg::i64(n as i64),
                Arg::Buf((key as i64).to_le_bytes().to_vec()),
            ],
        );
        let got = Vals::decode(d, out[0].as_ref().unwrap());
        let want = Vals::F((0..n as u64).map(|i| quantize(d, unit_ref(key, i))).collect());
        assert_vals(&spec.entry_name(), &got, &want, 0.0);
    }
    assert!(RandomUniformSpec::new(I64).is_err());
}

// ---- sliding windows (im2col / col2im) ---------------------------------------------------

/// A window geometry: (batches, height, width), kernel, stride, dilation; the output extent
/// follows.
struct Window {
    image: (usize, usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
}

impl Window {
    fn out(&self) -> (usize, usize) {
        let ext = |n: usize, k: usize, s: usize, d: usize| (n - d * (k - 1) - 1) / s + 1;
        (
            ext(self.image.1, self.kernel.0, self.stride.0, self.dilation.0),
            ext(self.image.2, self.kernel.1, self.stride.1, self.dilation.1),
        )
    }
    /// `(column index, pixel index)` of every tap of every window, in the column's order.
    fn taps(&self) -> Vec<(usize, usize)> {
        let (b, h, w) = self.image;
        let (oh, ow) = self.out();
        let (kh, kw) = self.kernel;
        let mut out = Vec::new();
        for bi in 0..b {
            for i in 0..kh {
                for j in 0..kw {
                    for y in 0..oh {
                        for x in 0..ow {
                            let row = i * self.dilation.0 + y * self.stride.0;
                            let col = j * self.dilation.1 + x * self.stride.1;
                            out.push((out.len(), (bi * h + row) * w + col));
                        }
                    }
                }
            }
        }
        out
    }
    fn args(&self) -> Vec<Arg> {
        let (oh, ow) = self.out();
        [
            self.image.0,
            self.image.1,
            self.image.2,
            self.kernel.0,
            self.kernel.1,
            self.stride.0,
            self.stride.1,
            self.dilation.0,
            self.dilation.1,
            oh,
            ow,
        ]
        .into_iter()
        .map(|v| Arg::i64(v as i64))
        .collect()
    }
}

#[test]
fn unfold_copies_every_tap_and_fold_adds_them_back() {
    if !available() {
        return;
    }
    let windows = [
        Window {
            image: (2, 5, 6),
            kernel: (3, 3),
            stride: (1, 1),
            dilation: (1, 1),
        },
        Window {
            image: (3, 7, 8),
            kernel: (2, 3),
            stride: (2, 1),
            dilation: (1, 2),
        },
        Window {
            image: (1, 9, 4),
            kernel: (1, 1),
            stride: (3, 2),
            dilation: (1, 1),
        },
        Window {
            image: (2, 4, 4),
            kernel: (4, 4),
            stride: (1, 1),
            dilation: (1, 1),
        },
    ];
    for win in &windows {
        let (b, h, w) = win.image;
        let taps = win.taps();
        for d in KernelDType::ALL {
            // unfold: a pure copy, exact in every dtype.
            let image: Vec<i64> = (0..b * h * w).map(|v| wrap_int(d, v as i64 % 97)).collect();
            let as_vals = |v: Vec<i64>| {
                if d.is_float() {
                    Vals::F(v.into_iter().map(|x| x as f64).collect())
                } else {
                    Vals::I(v)
                }
            };
            let spec: KernelSpec = UnfoldSpec::new(d).unwrap().into();
            let mut args = vec![
                Arg::zeros(taps.len() * d.size_in_bytes()),
                Arg::Buf(as_vals(image.clone()).encode(d)),
            ];
            args.extend(win.args());
            let out = launch_1d(&spec, args);
            let want: Vec<i64> = taps.iter().map(|&(_, p)| image[p]).collect();
            assert_vals(
                &spec.entry_name(),
                &Vals::decode(d, out[0].as_ref().unwrap()),
                &as_vals(want),
                0.0,
            );
            // fold: every pixel the sum of the taps that read it (floats only).
            let Ok(fold) = FoldSpec::new(d) else {
                assert!(!d.is_float(), "fold refuses {d}");
                continue;
            };
            let cols: Vec<f64> = noise(taps.len(), 7)
                .into_iter()
                .map(|u| quantize(d, 2.0 * u - 1.0))
                .collect();
            let mut want = vec![0.0; b * h * w];
            for &(c, p) in &taps {
                want[p] += cols[c];
            }
            let spec: KernelSpec = fold.into();
            let mut args = vec![Arg::zeros(b * h * w * d.size_in_bytes()), Arg::Buf(encode_f(d, &cols))];
            args.extend(win.args());
            let out = launch_1d(&spec, args);
            let got = decode_f(d, out[0].as_ref().unwrap());
            // Sums of up to 16 terms of either sign: compare against the scale of the terms.
            for (k, (&g, &wv)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - wv).abs() <= 16.0 * tol(d) + 1e-300,
                    "{}: pixel {k}: got {g}, want {wv}",
                    spec.entry_name()
                );
            }
        }
    }
}

/// The mean and biased variance of channel `ch` of `x` `[a, c, b]`, in f64.
fn channel_moments_ref(x: &[f64], (a, c, b): (usize, usize, usize), ch: usize) -> (f64, f64) {
    let vals: Vec<f64> = (0..a)
        .flat_map(|i| x[(i * c + ch) * b..(i * c + ch + 1) * b].iter().copied())
        .collect();
    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
    let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / vals.len() as f64;
    (mean, var)
}

/// Runs the partial pass of `op` over `[a, c, b]` in `splits` chunks with blocks of `block`
/// threads on `inputs`, then `last` (`Finish` or `Sums`) with its outputs `outputs` and its
/// extra arguments `extra` (after `partial`, before `c`): every argument of `last` after it ran.
fn channel_passes(
    (op, last): (ChannelOp, ChannelPass),
    d: KernelDType,
    (a, c, b, splits, block): (usize, usize, usize, usize, u32),
    inputs: Vec<Arg>,
    outputs: Vec<Arg>,
    extra: Vec<Arg>,
) -> Vec<Option<Vec<u8>>> {
    let partial: KernelSpec = ChannelSpec::new(op, d, ChannelPass::Partial).unwrap().into();
    let KernelSpec::Channel(ps) = partial else {
        unreachable!()
    };
    let width = ps.partial_width() * ps.acc_type().size_in_bytes();
    let mut args = vec![Arg::zeros(c * splits * width)];
    args.extend(inputs);
    args.extend([a, c, b, splits].map(|v| Arg::i64(v as i64)));
    // Two blocks, so that a block takes several tasks in turn.
    let out = run(&partial, 2, block, args);
    let finish: KernelSpec = ChannelSpec::new(op, d, last).unwrap().into();
    let mut args = outputs;
    args.push(Arg::Buf(out[0].clone().unwrap()));
    args.extend(extra);
    let counts = if last == ChannelPass::Sums {
        vec![c, splits]
    } else {
        vec![c, a * b, splits]
    };
    args.extend(counts.into_iter().map(|v| Arg::i64(v as i64)));
    run(&finish, 1, 64, args)
}

#[test]
fn channel_kernels_give_batch_norm_statistics_and_gradients() {
    if !available() {
        return;
    }
    // Chunks that start inside a run (21 values in 4 chunks of 6), blocks of 64 and 256.
    for case in [
        (2usize, 3usize, 5usize, 1usize, 64u32),
        (3, 2, 7, 4, 64),
        (4, 3, 33, 2, 256),
    ] {
        let (a, c, b, splits, block) = case;
        for d in KernelDType::FLOATS {
            let n = a * c * b;
            let shape = (a, c, b);
            // Far from zero, so that E[x^2] - E[x]^2 would cancel.
            let x: Vec<f64> = noise(n, n as u64)
                .iter()
                .map(|&u| quantize(d, 100.0 + 4.0 * u))
                .collect();
            let g: Vec<f64> = noise(n, 7).iter().map(|&u| quantize(d, 2.0 * u - 1.0)).collect();
            let what = format!("{d} [{a}, {c}, {b}] in {splits} chunks, blocks of {block}");
            let rel = tol(d) * 8.0;
            let near = |got: f64, want: f64, scale: f64, k: &str| {
                assert!(
                    (got - want).abs() <= rel * (scale + want.abs()),
                    "{what}: {k}: got {got:e}, want {want:e}"
                );
            };

            let out = channel_passes(
                (ChannelOp::Moments, ChannelPass::Finish),
                d,
                case,
                vec![Arg::Buf(encode_f(d, &x))],
                vec![Arg::zeros(2 * c * d.size_in_bytes())],
                vec![],
            );
            let moments = decode_f(d, out[0].as_ref().unwrap());
            let stats: Vec<(f64, f64)> = (0..c).map(|ch| channel_moments_ref(&x, shape, ch)).collect();
            for (ch, &(mean, var)) in stats.iter().enumerate() {
                near(moments[ch], mean, 0.0, &format!("mean {ch}"));
                // The variance (about 1.3) is compared against the values' scale (100) in f32.
                near(
                    moments[c + ch],
                    var,
                    if d == F64 { 0.0 } else { 1.0 },
                    &format!("var {ch}"),
                );
            }

            // Stored statistics, as the op layer passes them.
            let mean: Vec<f64> = stats.iter().map(|s| quantize(d, s.0)).collect();
            let rstd: Vec<f64> = stats.iter().map(|s| quantize(d, 1.0 / (s.1 + 1e-5).sqrt())).collect();
            let gamma: Vec<f64> = (0..c).map(|ch| quantize(d, 0.5 + ch as f64)).collect();
            let channel = |i: usize| (i / b) % c;
            let x_hat: Vec<f64> = (0..n).map(|i| (x[i] - mean[channel(i)]) * rstd[channel(i)]).collect();
            let y: Vec<f64> = x_hat.iter().map(|&v| quantize(d, v)).collect();
            let sums = |f: &dyn Fn(usize) -> f64, ch: usize| -> f64 {
                (0..n).filter(|&i| channel(i) == ch).map(f).sum::<f64>()
            };
            let count = (a * b) as f64;
            let acc = if d == F64 { 8 } else { 4 };

            // The standardisation's Jacobian product.
            let out = channel_passes(
                (ChannelOp::NormBackward, ChannelPass::Finish),
                d,
                case,
                vec![Arg::Buf(encode_f(d, &y)), Arg::Buf(encode_f(d, &g))],
                vec![Arg::zeros(2 * c * acc)],
                vec![],
            );
            let apply: KernelSpec = ChannelSpec::new(ChannelOp::NormBackward, d, ChannelPass::Apply)
                .unwrap()
                .into();
            let mut args = vec![Arg::zeros(n * d.size_in_bytes())];
            args.extend([&y, &g, &rstd].map(|v| Arg::Buf(encode_f(d, v))));
            args.push(Arg::Buf(out[0].clone().unwrap()));
            args.extend([c, b, n].map(|v| Arg::i64(v as i64)));
            let got = decode_f(d, run(&apply, 2, 64, args)[0].as_ref().unwrap());
            let mv: Vec<f64> = (0..c).map(|ch| sums(&|i| g[i], ch) / count).collect();
            let mvy: Vec<f64> = (0..c).map(|ch| sums(&|i| g[i] * y[i], ch) / count).collect();
            for i in 0..n {
                let ch = channel(i);
                let want = rstd[ch] * (g[i] - mv[ch] - y[i] * mvy[ch]);
                near(got[i], want, rstd[ch], &format!("norm backward {i}"));
            }

            // Batch norm's backward: dx, then dgamma, then dbeta.
            let out = channel_passes(
                (ChannelOp::BatchNormBackward, ChannelPass::Finish),
                d,
                case,
                vec![
                    Arg::Buf(encode_f(d, &x)),
                    Arg::Buf(encode_f(d, &g)),
                    Arg::Buf(encode_f(d, &mean)),
                ],
                vec![Arg::zeros((n + 2 * c) * d.size_in_bytes()), Arg::zeros(2 * c * acc)],
                vec![Arg::Buf(encode_f(d, &rstd))],
            );
            let apply: KernelSpec = ChannelSpec::new(ChannelOp::BatchNormBackward, d, ChannelPass::Apply)
                .unwrap()
                .into();
            let mut args = vec![Arg::Buf(out[0].clone().unwrap())];
            args.extend([&x, &g, &mean, &rstd, &gamma].map(|v| Arg::Buf(encode_f(d, v))));
            args.push(Arg::Buf(out[1].clone().unwrap()));
            args.extend([c, b, n].map(|v| Arg::i64(v as i64)));
            let packed = decode_f(d, run(&apply, 2, 64, args)[0].as_ref().unwrap());
            let s1: Vec<f64> = (0..c).map(|ch| sums(&|i| g[i], ch)).collect();
            let s2: Vec<f64> = (0..c).map(|ch| sums(&|i| g[i] * x_hat[i], ch)).collect();
            for ch in 0..c {
                near(packed[n + ch], s2[ch], count.sqrt(), &format!("dgamma {ch}"));
                near(packed[n + c + ch], s1[ch], count.sqrt(), &format!("dbeta {ch}"));
            }
            for i in 0..n {
                let ch = channel(i);
                let want = gamma[ch] * rstd[ch] * (g[i] - s1[ch] / count - x_hat[i] * s2[ch] / count);
                near(packed[i], want, gamma[ch] * rstd[ch], &format!("dx {i}"));
            }

            // This process's sums alone (synchronised batch norm adds them over the ranks).
            let out = channel_passes(
                (ChannelOp::BatchNormBackward, ChannelPass::Sums),
                d,
                case,
                vec![
                    Arg::Buf(encode_f(d, &x)),
                    Arg::Buf(encode_f(d, &g)),
                    Arg::Buf(encode_f(d, &mean)),
                ],
                vec![Arg::zeros(2 * c * acc)],
                vec![Arg::Buf(encode_f(d, &rstd))],
            );
            let acc_dtype = if d == F64 { F64 } else { F32 };
            let sums = decode_f(acc_dtype, out[0].as_ref().unwrap());
            for ch in 0..c {
                near(sums[ch], s2[ch], count.sqrt(), &format!("sum(g x_hat) {ch}"));
                near(sums[c + ch], s1[ch], count.sqrt(), &format!("sum(g) {ch}"));
            }

            // The output pass: (x - mean) scale + shift.
            let shift: Vec<f64> = (0..c).map(|ch| quantize(d, 0.25 - ch as f64)).collect();
            let spec: KernelSpec = ChannelSpec::new(ChannelOp::ScaleShift, d, ChannelPass::Apply)
                .unwrap()
                .into();
            let mut args = vec![Arg::zeros(n * d.size_in_bytes())];
            args.extend([&x, &mean, &gamma, &shift].map(|v| Arg::Buf(encode_f(d, v))));
            args.extend([c, b, n].map(|v| Arg::i64(v as i64)));
            let y = decode_f(d, run(&spec, 2, 64, args)[0].as_ref().unwrap());
            for i in 0..n {
                let ch = channel(i);
                let want = (x[i] - mean[ch]) * gamma[ch] + shift[ch];
                near(y[i], want, gamma[ch].abs(), &format!("scale and shift {i}"));
            }
        }
    }
}

// ---- pooling read in place -------------------------------------------------------------

/// A pooling geometry: (batches, height, width), kernel, stride, padding.
struct Pool {
    image: (usize, usize, usize),
    kernel: (usize, usize),
    stride: (usize, usize),
    padding: (usize, usize),
}

impl Pool {
    fn out(&self) -> (usize, usize) {
        let ext = |n: usize, k: usize, s: usize, p: usize| (n + 2 * p - k) / s + 1;
        (
            ext(self.image.1, self.kernel.0, self.stride.0, self.padding.0),
            ext(self.image.2, self.kernel.1, self.stride.1, self.padding.1),
        )
    }
    /// For every window in order, the flat pixels (batch included) it covers inside the
    /// image, in row-major tap order.
    fn windows(&self) -> Vec<Vec<usize>> {
        let (b, h, w) = self.image;
        let (oh, ow) = self.out();
        let mut out = Vec::new();
        for bi in 0..b {
            for y in 0..oh {
                for x in 0..ow {
                    let mut taps = Vec::new();
                    for i in 0..self.kernel.0 {
                        for j in 0..self.kernel.1 {
                            let r = (y * self.stride.0 + i) as i64 - self.padding.0 as i64;
                            let c = (x * self.stride.1 + j) as i64 - self.padding.1 as i64;
                            if (0..h as i64).contains(&r) && (0..w as i64).contains(&c) {
                                taps.push((bi * h + r as usize) * w + c as usize);
                            }
                        }
                    }
                    out.push(taps);
                }
            }
        }
        out
    }
    fn args(&self, scale: Option<f64>) -> Vec<Arg> {
        let (oh, ow) = self.out();
        let mut a: Vec<Arg> = [
            self.image.0,
            self.image.1,
            self.image.2,
            self.kernel.0,
            self.kernel.1,
            self.stride.0,
            self.stride.1,
            self.padding.0,
            self.padding.1,
            oh,
            ow,
        ]
        .into_iter()
        .map(|v| Arg::i64(v as i64))
        .collect();
        a.extend(scale.map(Arg::f64));
        a
    }
}

#[test]
fn pool_kernels_sum_spread_and_choose_the_first_maximum() {
    if !available() {
        return;
    }
    let pools = [
        // The stem's pooling: 3x3, stride 2, padding 1, on an odd image.
        Pool {
            image: (2, 7, 9),
            kernel: (3, 3),
            stride: (2, 2),
            padding: (1, 1),
        },
        // Overlapping windows, uneven kernel and stride, no padding.
        Pool {
            image: (3, 6, 5),
            kernel: (2, 3),
            stride: (1, 2),
            padding: (0, 1),
        },
        // Windows wider than the stride and padding as wide as the kernel allows.
        Pool {
            image: (1, 4, 4),
            kernel: (4, 2),
            stride: (3, 1),
            padding: (2, 1),
        },
    ];
    for pool in &pools {
        let (b, h, w) = pool.image;
        let windows = pool.windows();
        let scale = 1.0 / (pool.kernel.0 * pool.kernel.1) as f64;
        for d in [F32, F64, F16, BF16] {
            // The sum: every window's pixels, scaled.
            let x: Vec<f64> = noise(b * h * w, 11)
                .into_iter()
                .map(|u| quantize(d, 2.0 * u - 1.0))
                .collect();
            let spec: KernelSpec = PoolSpec::new(PoolOp::Sum, d).unwrap().into();
            let mut args = vec![Arg::zeros(windows.len() * d.size_in_bytes()), Arg::Buf(encode_f(d, &x))];
            args.extend(pool.args(Some(scale)));
            let got = decode_f(d, launch_1d(&spec, args)[0].as_ref().unwrap());
            for (k, taps) in windows.iter().enumerate() {
                let want = scale * taps.iter().map(|&p| x[p]).sum::<f64>();
                assert!(
                    (got[k] - want).abs() <= 4.0 * tol(d),
                    "{}: window {k}: got {}, want {want}",
                    spec.entry_name(),
                    got[k]
                );
            }
            // The transpose: every pixel the scaled sum of the windows covering it.
            let v: Vec<f64> = noise(windows.len(), 12)
                .into_iter()
                .map(|u| quantize(d, 2.0 * u - 1.0))
                .collect();
            let mut want = vec![0.0; b * h * w];
            for (k, taps) in windows.iter().enumerate() {
                for &p in taps {
                    want[p] += scale * v[k];
                }
            }
            let spec: KernelSpec = PoolSpec::new(PoolOp::SumTranspose, d).unwrap().into();
            let mut args = vec![Arg::zeros(b * h * w * d.size_in_bytes()), Arg::Buf(encode_f(d, &v))];
            args.extend(pool.args(Some(scale)));
            let got = decode_f(d, launch_1d(&spec, args)[0].as_ref().unwrap());
            for (k, (&g, &wv)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (g - wv).abs() <= 4.0 * tol(d),
                    "{}: pixel {k}: got {g}, want {wv}",
                    spec.entry_name()
                );
            }
            // The argmax: values from a small set (ties), and a NaN in the first image.
            let mut x: Vec<f64> = noise(b * h * w, 13).into_iter().map(|u| (u * 4.0).floor()).collect();
            x[w + 1] = f64::NAN;
            let spec: KernelSpec = PoolSpec::new(PoolOp::Argmax, d).unwrap().into();
            let mut args = vec![Arg::zeros(windows.len() * 8), Arg::Buf(encode_f(d, &x))];
            args.extend(pool.args(None));
            let got = decode_i(I64, launch_1d(&spec, args)[0].as_ref().unwrap());
            for (k, taps) in windows.iter().enumerate() {
                let want = taps.iter().copied().find(|&p| x[p].is_nan()).unwrap_or_else(|| {
                    let top = taps.iter().map(|&p| x[p]).fold(f64::NEG_INFINITY, f64::max);
                    *taps.iter().find(|&&p| x[p] == top).unwrap()
                });
                assert_eq!(got[k], want as i64, "{}: window {k}", spec.entry_name());
            }
        }
        assert!(PoolSpec::new(PoolOp::Sum, I64).is_err());
    }
}

#[test]
fn sgd_updates_the_parameter_and_the_velocity_in_one_launch() {
    if !available() {
        return;
    }
    let n = 37;
    let (lr, mu, wd) = (0.05, 0.9, 5e-4);
    for d in [F32, F64, F16, BF16] {
        let vals = |seed: u64| -> Vec<f64> { noise(n, seed).into_iter().map(|u| quantize(d, 4.0 * u - 2.0)).collect() };
        let (p, g, v) = (vals(1), vals(2), vals(3));
        for (momentum, nesterov) in [(false, false), (true, false), (true, true)] {
            // The formula in f64 (the kernel computes in float for halves and f32: compare
            // within the dtype's precision).
            let mut want_p = Vec::new();
            let mut want_v = Vec::new();
            for i in 0..n {
                let gi = g[i] + p[i] * wd;
                if momentum {
                    let v1 = v[i] * mu + gi;
                    let step = if nesterov { gi + v1 * mu } else { v1 };
                    want_p.push(quantize(d, p[i] - step * lr));
                    want_v.push(quantize(d, v1));
                } else {
                    want_p.push(quantize(d, p[i] - gi * lr));
                }
            }
            let spec: KernelSpec = SgdSpec::new(d, momentum).unwrap().into();
            let k = if momentum { 2 } else { 1 };
            let mut args = vec![
                Arg::zeros(k * n * d.size_in_bytes()),
                Arg::Buf(encode_f(d, &p)),
                Arg::Buf(encode_f(d, &g)),
            ];
            if momentum {
                args.push(Arg::Buf(encode_f(d, &v)));
            }
            args.extend([
                Arg::i64(n as i64),
                Arg::f64(lr),
                Arg::f64(if momentum { mu } else { 0.0 }),
                Arg::f64(wd),
                Arg::i32(nesterov as i32),
            ]);
            let out = launch_1d(&spec, args);
            let what = format!("{} nesterov {nesterov}", spec.entry_name());
            let all = out[0].as_ref().unwrap();
            let row = all.len() / k;
            let rel = tol(d) * 16.0;
            assert_vals(&what, &Vals::decode(d, &all[..row]), &Vals::F(want_p), rel);
            if momentum {
                assert_vals(&what, &Vals::decode(d, &all[row..]), &Vals::F(want_v), rel);
            }
        }
    }
    assert!(SgdSpec::new(I64, true).is_err());
}
