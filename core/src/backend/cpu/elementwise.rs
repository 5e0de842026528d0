//! Elementwise kernels: maps over one, two or three views of one shape.

use std::mem::MaybeUninit;

use num_traits::Float;
use rayon::prelude::*;

use super::walk::Walk;
use super::{HALVES_WIDENED, PARALLEL_MIN, dense_run, fast_math, gelu, host, wrap};
use crate::backend::{BinaryOp, CmpOp, UnaryOp};
use crate::dtype::{DType, bf16, f16};
use crate::layout::Layout;
use crate::storage::{CpuBuffer, RawTensor};
use crate::with_cpu_buffer;

const CHUNK: usize = 8192;

/// An operand of an elementwise kernel: a contiguous run of the buffer, one value repeated
/// (a broadcast scalar), or a strided view (its buffer and layout). Kernels whose operands are
/// all runs or repeated values ignore the shape (elementwise results do not depend on it);
/// the others walk their views together ([`Walk`]).
enum Src<'a, T> {
    Flat(&'a [T]),
    Splat(T, usize),
    Strided(&'a [T], &'a Layout),
}

impl<T> Src<'_, T> {
    fn len(&self) -> usize {
        match self {
            Src::Flat(s) => s.len(),
            Src::Splat(_, n) => *n,
            Src::Strided(_, layout) => layout.numel(),
        }
    }
}

/// True when every element of the (non-empty) view is the buffer element at its offset.
fn is_splat(layout: &Layout) -> bool {
    layout.numel() > 0
        && layout
            .strides
            .iter()
            .zip(&layout.shape)
            .all(|(&s, &n)| s == 0 || n == 1)
}

/// True when `layout` can be read as a run or a repeated value.
fn is_flat(layout: &Layout) -> bool {
    layout.is_contiguous() || is_splat(layout)
}

/// The operand for `layout` over `data`: a run or a repeated value when `flat` (all operands
/// pass [`is_flat`]; binary, comparison and select kernels accept repeated values), else a
/// strided view.
fn ev<'a, T: Copy>(data: &'a [T], layout: &'a Layout, flat: bool) -> Src<'a, T> {
    if flat && layout.is_contiguous() {
        Src::Flat(dense_run(data, layout))
    } else if flat {
        Src::Splat(data[layout.offset], layout.numel())
    } else {
        Src::Strided(data, layout)
    }
}

/// A vector of `n` elements written once each, in parallel chunks of `CHUNK`: `fill(start,
/// chunk)` writes all of `chunk`, elements `start..start + chunk.len()`. Nothing is zeroed
/// first (that was a fifth of an elementwise kernel's memory traffic).
fn par_collect<U: Send>(n: usize, fill: impl Fn(usize, &mut [MaybeUninit<U>]) + Sync + Send) -> Vec<U> {
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(k, chunk)| fill(k * CHUNK, chunk));
    // SAFETY: every chunk was written whole (the callers zip it with an input slice of its
    // length). A panic in `fill` unwinds past this line and drops `out` with length 0.
    unsafe { out.set_len(n) };
    out
}

/// Writes `f` of each element of `src` into `out` (one length), in a loop compiled for
/// AVX-512 when the CPU has it (`NABLA_CPU_NO_AVX512` unset, as for the GEMM): 16 f32 lanes
/// where the baseline build has SSE's 4, for the maps that compute (exp, tanh, erf, GELU).
/// Each element's result is the same on both paths: nothing is reassociated or contracted.
fn fill_mapped<T: Copy, U>(out: &mut [MaybeUninit<U>], src: &[T], f: &impl Fn(T) -> U) {
    super::with_wide_loops(
        #[inline(always)]
        || fill_mapped_baseline(out, src, f),
    )
}

#[inline(always)]
fn fill_mapped_baseline<T: Copy, U>(out: &mut [MaybeUninit<U>], src: &[T], f: &impl Fn(T) -> U) {
    for (o, &i) in out.iter_mut().zip(src) {
        o.write(f(i));
    }
}

/// `f` applied to every element of a run (in parallel chunks when it is long).
fn map_run<T, U>(s: &[T], f: impl Fn(T) -> U + Sync + Send) -> Vec<U>
where
    T: Copy + Send + Sync,
    U: Copy + Send + Sync,
{
    if s.len() < PARALLEL_MIN {
        let mut out = Vec::with_capacity(s.len());
        fill_mapped(&mut out.spare_capacity_mut()[..s.len()], s, &f);
        // SAFETY: `fill_mapped` wrote all `s.len()` elements.
        unsafe { out.set_len(s.len()) };
        return out;
    }
    par_collect(s.len(), |start, out| {
        let end = start + out.len();
        fill_mapped(out, &s[start..end], &f);
    })
}

/// `f` applied to every element, in row-major order.
fn map1<T, U>(x: &Src<T>, f: impl Fn(T) -> U + Sync + Send) -> Vec<U>
where
    T: Copy + Send + Sync,
    U: Copy + Send + Sync,
{
    match x {
        Src::Flat(s) => map_run(s, f),
        Src::Splat(v, n) => vec![f(*v); *n],
        Src::Strided(d, layout) => {
            let walk = Walk::new(&layout.shape, [layout]);
            let [s] = walk.inner_strides();
            walk.collect(|out, [o]| match s {
                1 => fill_mapped(out, &d[o as usize..][..out.len()], &f),
                0 => out.fill(MaybeUninit::new(f(d[o as usize]))),
                s => {
                    for (i, slot) in out.iter_mut().enumerate() {
                        slot.write(f(d[(o + i as isize * s) as usize]));
                    }
                }
            })
        }
    }
}

/// `f` applied to pairs of elements of two operands of one shape (both flat or both strided).
fn map2<T, U>(a: &Src<T>, b: &Src<T>, f: impl Fn(T, T) -> U + Sync + Send) -> Vec<U>
where
    T: Copy + Send + Sync,
    U: Copy + Send + Sync + Default,
{
    let n = a.len();
    match (a, b) {
        (Src::Flat(sa), Src::Flat(sb)) if n >= PARALLEL_MIN => par_collect(n, |start, out| {
            let end = start + out.len();
            for ((o, &x), &y) in out.iter_mut().zip(&sa[start..end]).zip(&sb[start..end]) {
                o.write(f(x, y));
            }
        }),
        (Src::Flat(sa), Src::Flat(sb)) => sa.iter().zip(sb.iter()).map(|(&x, &y)| f(x, y)).collect(),
        (Src::Flat(sa), Src::Splat(y, _)) => map_run(sa, |x| f(x, *y)),
        (Src::Splat(x, _), Src::Flat(sb)) => map_run(sb, |y| f(*x, y)),
        (Src::Splat(x, _), Src::Splat(y, _)) => vec![f(*x, *y); n],
        (Src::Strided(da, la), Src::Strided(db, lb)) => {
            let walk = Walk::new(&la.shape, [la, lb]);
            let [sa, sb] = walk.inner_strides();
            walk.collect(|out, [oa, ob]| {
                let (oa, ob, n) = (oa as usize, ob as usize, out.len());
                match (sa, sb) {
                    (1, 1) => {
                        for ((slot, &x), &y) in out.iter_mut().zip(&da[oa..oa + n]).zip(&db[ob..ob + n]) {
                            slot.write(f(x, y));
                        }
                    }
                    (1, 0) => {
                        let y = db[ob];
                        for (slot, &x) in out.iter_mut().zip(&da[oa..oa + n]) {
                            slot.write(f(x, y));
                        }
                    }
                    (0, 1) => {
                        let x = da[oa];
                        for (slot, &y) in out.iter_mut().zip(&db[ob..ob + n]) {
                            slot.write(f(x, y));
                        }
                    }
                    (sa, sb) => {
                        for (i, slot) in out.iter_mut().enumerate() {
                            let i = i as isize;
                            slot.write(f(
                                da[(oa as isize + i * sa) as usize],
                                db[(ob as isize + i * sb) as usize],
                            ));
                        }
                    }
                }
            })
        }
        _ => unreachable!("operands of one kernel are all flat or all strided"),
    }
}

fn float_unary<T: Float + Send + Sync + Default>(op: UnaryOp, x: &Src<T>) -> Vec<T> {
    let one = T::one();
    let zero = T::zero();
    match op {
        UnaryOp::Neg => map1(x, |v| -v),
        UnaryOp::Exp => map1(x, |v| v.exp()),
        UnaryOp::Log => map1(x, |v| v.ln()),
        UnaryOp::Log1p => map1(x, |v| v.ln_1p()),
        UnaryOp::Sqrt => map1(x, |v| v.sqrt()),
        UnaryOp::Rsqrt => map1(x, |v| one / v.sqrt()),
        UnaryOp::Sin => map1(x, |v| v.sin()),
        UnaryOp::Cos => map1(x, |v| v.cos()),
        UnaryOp::Tanh => map1(x, |v| v.tanh()),
        UnaryOp::Sigmoid => map1(x, |v| {
            if v >= zero {
                one / (one + (-v).exp())
            } else {
                let e = v.exp();
                e / (one + e)
            }
        }),
        UnaryOp::Abs => map1(x, |v| v.abs()),
        UnaryOp::Sign => map1(x, |v| {
            if v > zero {
                one
            } else if v < zero {
                -one
            } else {
                v
            }
        }),
        UnaryOp::Relu => map1(x, |v| if v > zero { v } else { zero }),
        UnaryOp::Floor => map1(x, |v| v.floor()),
        UnaryOp::Ceil => map1(x, |v| v.ceil()),
        UnaryOp::Trunc => map1(x, |v| v.trunc()),
        UnaryOp::Round => map1(x, |v| {
            // Half away from zero, then ties moved back to the even neighbour.
            let r = v.round();
            let two = one + one;
            if (r - v).abs() == one / two && r % two != zero {
                r - v.signum()
            } else {
                r
            }
        }),
        UnaryOp::Erf | UnaryOp::Gelu | UnaryOp::GeluDerivative | UnaryOp::GeluExact | UnaryOp::GeluExactDerivative => {
            unreachable!("erf and GELU are computed by the caller with the element type's tanh or erf")
        }
        UnaryOp::Not => unreachable!("checked by the op layer"),
    }
}

/// Elementwise unary kernel.
pub(super) fn unary(op: UnaryOp, x: &RawTensor) -> RawTensor {
    let flat = x.layout.is_contiguous();
    let shape = x.shape();
    match host(x) {
        CpuBuffer::F32(d) => {
            let v = ev(d, &x.layout, flat);
            let out = match op {
                UnaryOp::Exp => map1(&v, fast_math::exp_f32),
                UnaryOp::Tanh => map1(&v, fast_math::tanh_f32),
                UnaryOp::Sigmoid => map1(&v, |a: f32| 1.0 / (1.0 + fast_math::exp_f32(-a))),
                UnaryOp::Erf => map1(&v, fast_math::erf_f32_inlined()),
                UnaryOp::Gelu => map1(&v, gelu::tanh_form(fast_math::tanh_f32)),
                UnaryOp::GeluDerivative => map1(&v, gelu::tanh_form_derivative(fast_math::tanh_f32)),
                UnaryOp::GeluExact => map1(&v, gelu::erf_form_f32()),
                UnaryOp::GeluExactDerivative => map1(&v, gelu::erf_form_derivative_f32()),
                _ => float_unary(op, &v),
            };
            wrap(out, shape)
        }
        CpuBuffer::F64(d) => {
            let v = ev(d, &x.layout, flat);
            let out = match op {
                UnaryOp::Erf => map1(&v, libm::erf),
                UnaryOp::Gelu => map1(&v, gelu::tanh_form(f64::tanh)),
                UnaryOp::GeluDerivative => map1(&v, gelu::tanh_form_derivative(f64::tanh)),
                UnaryOp::GeluExact => map1(&v, gelu::erf_form(libm::erfc)),
                UnaryOp::GeluExactDerivative => map1(&v, gelu::erf_form_derivative(libm::erfc, f64::exp)),
                _ => float_unary(op, &v),
            };
            wrap(out, shape)
        }
        CpuBuffer::I64(d) => {
            let v = ev(d, &x.layout, flat);
            let out = match op {
                UnaryOp::Neg => map1(&v, |a: i64| a.wrapping_neg()),
                UnaryOp::Abs => map1(&v, |a: i64| a.wrapping_abs()),
                UnaryOp::Sign => map1(&v, |a: i64| a.signum()),
                UnaryOp::Relu => map1(&v, |a: i64| a.max(0)),
                _ => unreachable!("checked by the op layer"),
            };
            wrap(out, shape)
        }
        CpuBuffer::Bool(d) => wrap(map1(&ev(d, &x.layout, flat), |a: bool| !a), shape),
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
    }
}

fn float_binary<T: Float + Send + Sync + Default>(op: BinaryOp, a: &Src<T>, b: &Src<T>) -> Vec<T> {
    match op {
        BinaryOp::Add => map2(a, b, |x, y| x + y),
        BinaryOp::Sub => map2(a, b, |x, y| x - y),
        BinaryOp::Mul => map2(a, b, |x, y| x * y),
        BinaryOp::Div => map2(a, b, |x, y| x / y),
        BinaryOp::Pow => map2(a, b, |x, y| x.powf(y)),
        BinaryOp::Maximum => map2(a, b, |x, y| if x.is_nan() || x >= y { x } else { y }),
        BinaryOp::Minimum => map2(a, b, |x, y| if x.is_nan() || x <= y { x } else { y }),
        _ => unreachable!("checked by the op layer"),
    }
}

fn int_pow(x: i64, y: i64) -> i64 {
    if y < 0 {
        panic!("pow: integer base {x} to the negative power {y}; cast to a float dtype first")
    }
    x.wrapping_pow(y.min(u32::MAX as i64) as u32)
}

fn int_div(x: i64, y: i64) -> i64 {
    if y == 0 {
        panic!("div: integer division by zero; cast to a float dtype for IEEE semantics")
    }
    x.div_euclid(y) - if y < 0 && x.rem_euclid(y) != 0 { 1 } else { 0 }
}

/// Elementwise binary kernel.
pub(super) fn binary(op: BinaryOp, a: &RawTensor, b: &RawTensor) -> RawTensor {
    let flat = is_flat(&a.layout) && is_flat(&b.layout);
    let shape = a.shape();
    match (host(a), host(b)) {
        (CpuBuffer::F32(x), CpuBuffer::F32(y)) => wrap(
            float_binary(op, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)),
            shape,
        ),
        (CpuBuffer::F64(x), CpuBuffer::F64(y)) => wrap(
            float_binary(op, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)),
            shape,
        ),
        (CpuBuffer::I64(x), CpuBuffer::I64(y)) => {
            let (x, y) = (ev(x, &a.layout, flat), ev(y, &b.layout, flat));
            let out = match op {
                BinaryOp::Add => map2(&x, &y, |p: i64, q| p.wrapping_add(q)),
                BinaryOp::Sub => map2(&x, &y, |p: i64, q| p.wrapping_sub(q)),
                BinaryOp::Mul => map2(&x, &y, |p: i64, q| p.wrapping_mul(q)),
                BinaryOp::Div => map2(&x, &y, int_div),
                BinaryOp::Pow => map2(&x, &y, int_pow),
                BinaryOp::Maximum => map2(&x, &y, |p: i64, q| p.max(q)),
                BinaryOp::Minimum => map2(&x, &y, |p: i64, q| p.min(q)),
                _ => unreachable!("checked by the op layer"),
            };
            wrap(out, shape)
        }
        (CpuBuffer::Bool(x), CpuBuffer::Bool(y)) => {
            let (x, y) = (ev(x, &a.layout, flat), ev(y, &b.layout, flat));
            let out = match op {
                BinaryOp::And | BinaryOp::Mul | BinaryOp::Minimum => map2(&x, &y, |p: bool, q| p & q),
                BinaryOp::Or | BinaryOp::Add | BinaryOp::Maximum => map2(&x, &y, |p: bool, q| p | q),
                BinaryOp::Xor => map2(&x, &y, |p: bool, q| p ^ q),
                _ => unreachable!("checked by the op layer"),
            };
            wrap(out, shape)
        }
        _ => unreachable!("operands of one dtype: checked by the op layer"),
    }
}

fn cmp<T: PartialOrd + Copy + Send + Sync>(op: CmpOp, a: &Src<T>, b: &Src<T>) -> Vec<bool> {
    match op {
        CmpOp::Eq => map2(a, b, |x, y| x == y),
        CmpOp::Ne => map2(a, b, |x, y| x != y),
        CmpOp::Lt => map2(a, b, |x, y| x < y),
        CmpOp::Le => map2(a, b, |x, y| x <= y),
        CmpOp::Gt => map2(a, b, |x, y| x > y),
        CmpOp::Ge => map2(a, b, |x, y| x >= y),
    }
}

/// Elementwise comparison kernel.
pub(super) fn compare(op: CmpOp, a: &RawTensor, b: &RawTensor) -> RawTensor {
    let flat = is_flat(&a.layout) && is_flat(&b.layout);
    let shape = a.shape();
    let out = match (host(a), host(b)) {
        (CpuBuffer::F32(x), CpuBuffer::F32(y)) => cmp(op, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)),
        (CpuBuffer::F64(x), CpuBuffer::F64(y)) => cmp(op, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)),
        (CpuBuffer::I64(x), CpuBuffer::I64(y)) => cmp(op, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)),
        (CpuBuffer::Bool(x), CpuBuffer::Bool(y)) => cmp(op, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)),
        _ => unreachable!("operands of one dtype: checked by the op layer"),
    };
    wrap(out, shape)
}

/// A branch-free `c ? x : y` (bit masks): a select on data-dependent conditions (relu's rule on
/// activations) would otherwise mispredict half the time, and the masks vectorise.
trait Blend: Copy {
    fn blend(c: bool, x: Self, y: Self) -> Self;
}

macro_rules! blend_bits {
    ($($t:ty => $bits:ty),*) => {$(
        impl Blend for $t {
            #[inline(always)]
            fn blend(c: bool, x: Self, y: Self) -> Self {
                let m = (0 as $bits).wrapping_sub(c as $bits);
                <$t>::from_bits((x.to_bits() & m) | (y.to_bits() & !m))
            }
        }
    )*};
}
blend_bits!(f32 => u32, f64 => u64, f16 => u16, bf16 => u16);

impl Blend for i64 {
    #[inline(always)]
    fn blend(c: bool, x: Self, y: Self) -> Self {
        let m = 0i64.wrapping_sub(c as i64);
        (x & m) | (y & !m)
    }
}

impl Blend for bool {
    #[inline(always)]
    fn blend(c: bool, x: Self, y: Self) -> Self {
        (c & x) | (!c & y)
    }
}

/// `c ? a : b` for one chunk of a flat select starting at element `start` (the operand kinds
/// are matched once, outside the loop).
fn sel_chunk<T: Blend>(c: &[bool], a: &Src<T>, b: &Src<T>, start: usize, out: &mut [T]) {
    let end = start + out.len();
    let pick = T::blend;
    match (a, b) {
        (Src::Flat(a), Src::Flat(b)) => {
            for (o, ((&c, &x), &y)) in out.iter_mut().zip(c.iter().zip(&a[start..end]).zip(&b[start..end])) {
                *o = pick(c, x, y);
            }
        }
        (Src::Flat(a), Src::Splat(y, _)) => {
            for (o, (&c, &x)) in out.iter_mut().zip(c.iter().zip(&a[start..end])) {
                *o = pick(c, x, *y);
            }
        }
        (Src::Splat(x, _), Src::Flat(b)) => {
            for (o, (&c, &y)) in out.iter_mut().zip(c.iter().zip(&b[start..end])) {
                *o = pick(c, *x, y);
            }
        }
        (Src::Splat(x, _), Src::Splat(y, _)) => {
            for (o, &c) in out.iter_mut().zip(c) {
                *o = pick(c, *x, *y);
            }
        }
        _ => unreachable!("operands of one kernel are all flat or all strided"),
    }
}

fn sel<'a, T: Blend + Send + Sync + Default>(c: &Src<bool>, a: &Src<'a, T>, b: &Src<'a, T>) -> Vec<T> {
    match (c, a, b) {
        (Src::Splat(c, _), _, _) => map1(if *c { a } else { b }, |v| v),
        (Src::Flat(c), _, _) => {
            let mut out = vec![T::default(); c.len()];
            if c.len() >= PARALLEL_MIN {
                out.par_chunks_mut(CHUNK)
                    .zip(c.par_chunks(CHUNK))
                    .enumerate()
                    .for_each(|(i, (o, c))| sel_chunk(c, a, b, i * CHUNK, o));
            } else {
                sel_chunk(c, a, b, 0, &mut out);
            }
            out
        }
        (Src::Strided(dc, lc), Src::Strided(da, la), Src::Strided(db, lb)) => {
            let walk = Walk::new(&la.shape, [lc, la, lb]);
            let [sc, sa, sb] = walk.inner_strides();
            walk.collect(|out, [oc, oa, ob]| {
                // Runs and repeated values (a mask over scores, a fill value) as slices.
                let (uc, ua, ub, n) = (oc as usize, oa as usize, ob as usize, out.len());
                match (sc, sa, sb) {
                    (1, 1, 1) => {
                        let operands = dc[uc..uc + n].iter().zip(&da[ua..ua + n]).zip(&db[ub..ub + n]);
                        for (slot, ((&c, &x), &y)) in out.iter_mut().zip(operands) {
                            slot.write(T::blend(c, x, y));
                        }
                        return;
                    }
                    (1, 1, 0) => {
                        let y = db[ub];
                        for (slot, (&c, &x)) in out.iter_mut().zip(dc[uc..uc + n].iter().zip(&da[ua..ua + n])) {
                            slot.write(T::blend(c, x, y));
                        }
                        return;
                    }
                    (1, 0, 1) => {
                        let x = da[ua];
                        for (slot, (&c, &y)) in out.iter_mut().zip(dc[uc..uc + n].iter().zip(&db[ub..ub + n])) {
                            slot.write(T::blend(c, x, y));
                        }
                        return;
                    }
                    _ => {}
                }
                for (i, slot) in out.iter_mut().enumerate() {
                    let i = i as isize;
                    let (c, x, y) = (
                        dc[(oc + i * sc) as usize],
                        da[(oa + i * sa) as usize],
                        db[(ob + i * sb) as usize],
                    );
                    slot.write(T::blend(c, x, y));
                }
            })
        }
        _ => unreachable!("operands of one kernel are all flat or all strided"),
    }
}

/// `cond ? a : b` kernel.
pub(super) fn select(cond: &RawTensor, a: &RawTensor, b: &RawTensor) -> RawTensor {
    let flat = is_flat(&cond.layout) && is_flat(&a.layout) && is_flat(&b.layout);
    let CpuBuffer::Bool(c) = host(cond) else {
        unreachable!("condition is bool: checked by the op layer")
    };
    let c = ev(c, &cond.layout, flat);
    let shape = a.shape();
    match (host(a), host(b)) {
        (CpuBuffer::F32(x), CpuBuffer::F32(y)) => {
            wrap(sel(&c, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)), shape)
        }
        (CpuBuffer::F64(x), CpuBuffer::F64(y)) => {
            wrap(sel(&c, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)), shape)
        }
        (CpuBuffer::I64(x), CpuBuffer::I64(y)) => {
            wrap(sel(&c, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)), shape)
        }
        (CpuBuffer::Bool(x), CpuBuffer::Bool(y)) => {
            wrap(sel(&c, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)), shape)
        }
        (CpuBuffer::F16(x), CpuBuffer::F16(y)) => {
            wrap(sel(&c, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)), shape)
        }
        (CpuBuffer::BF16(x), CpuBuffer::BF16(y)) => {
            wrap(sel(&c, &ev(x, &a.layout, flat), &ev(y, &b.layout, flat)), shape)
        }
        _ => unreachable!("operands of one dtype: checked by the op layer"),
    }
}

fn cast_view<T: Copy + Send + Sync>(
    v: &Src<T>,
    dtype: DType,
    shape: &[usize],
    to: impl Fn(T) -> f64 + Sync + Send,
) -> RawTensor {
    match dtype {
        DType::F32 => wrap(map1(v, |x| to(x) as f32), shape),
        DType::F64 => wrap(map1(v, &to), shape),
        DType::I64 => wrap(map1(v, |x| to(x) as i64), shape),
        DType::Bool => wrap(map1(v, |x| to(x) != 0.0), shape),
        DType::F16 => wrap(map1(v, |x| f16::from_f64(to(x))), shape),
        DType::BF16 => wrap(map1(v, |x| bf16::from_f64(to(x))), shape),
    }
}

/// Dtype conversion kernel (floats to i64 truncate toward zero; non-zero is true; to a half
/// rounds to nearest even). Conversions between f32 and the halves, the ones mixed precision
/// makes on every op, go straight rather than through f64.
pub(super) fn cast(x: &RawTensor, dtype: DType) -> RawTensor {
    let flat = x.layout.is_contiguous();
    let shape = x.shape();
    match (host(x), dtype) {
        (CpuBuffer::F32(d), DType::F64) => wrap(map1(&ev(d, &x.layout, flat), |v| v as f64), shape),
        (CpuBuffer::F64(d), DType::F32) => wrap(map1(&ev(d, &x.layout, flat), |v| v as f32), shape),
        (CpuBuffer::F32(d), DType::F16) => wrap(map1(&ev(d, &x.layout, flat), f16::from_f32), shape),
        (CpuBuffer::F32(d), DType::BF16) => wrap(map1(&ev(d, &x.layout, flat), bf16::from_f32), shape),
        (CpuBuffer::F16(d), DType::F32) => wrap(map1(&ev(d, &x.layout, flat), f16::to_f32), shape),
        (CpuBuffer::BF16(d), DType::F32) => wrap(map1(&ev(d, &x.layout, flat), bf16::to_f32), shape),
        (b, to) if b.dtype() == to => contiguous(x),
        (CpuBuffer::F32(d), _) => cast_view(&ev(d, &x.layout, flat), dtype, shape, |v| v as f64),
        (CpuBuffer::F64(d), _) => cast_view(&ev(d, &x.layout, flat), dtype, shape, |v| v),
        (CpuBuffer::I64(d), _) => cast_view(&ev(d, &x.layout, flat), dtype, shape, |v| v as f64),
        (CpuBuffer::Bool(d), _) => cast_view(&ev(d, &x.layout, flat), dtype, shape, |v| if v { 1.0 } else { 0.0 }),
        (CpuBuffer::F16(d), _) => cast_view(&ev(d, &x.layout, flat), dtype, shape, f16::to_f64),
        (CpuBuffer::BF16(d), _) => cast_view(&ev(d, &x.layout, flat), dtype, shape, bf16::to_f64),
    }
}

/// Row-major copy of a view.
pub(super) fn contiguous(x: &RawTensor) -> RawTensor {
    with_cpu_buffer!(host(x), d => wrap(copy_view(d, &x.layout), x.shape()))
}

/// The elements of the view `layout` of `data`, row-major: one slice copy for a contiguous
/// view, else a [`Walk`] (tiled for a transposed one).
pub(super) fn copy_view<T: Copy + Send + Sync>(data: &[T], layout: &Layout) -> Vec<T> {
    if layout.is_contiguous() {
        return dense_run(data, layout).to_vec();
    }
    map1(&Src::Strided(data, layout), |v| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `check` with the two loops' outputs for `f` over a sweep of f32 values, or says
    /// out loud that this CPU has no AVX-512 to compare against.
    #[cfg(target_arch = "x86_64")]
    fn both_paths(name: &str, f: impl Fn(f32) -> f32) {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("SKIPPED: {name}: this CPU has no AVX-512F, so there is no second path to compare");
            return;
        }
        let src: Vec<f32> = (-120_000..=120_000)
            .map(|i| i as f32 * 1e-4)
            .chain([
                f32::NAN,
                f32::INFINITY,
                f32::NEG_INFINITY,
                -0.0,
                1e-40,
                1e30,
                -1e30,
                88.8,
                -104.0,
            ])
            .collect();
        let mut wide = Vec::with_capacity(src.len());
        let mut base = Vec::with_capacity(src.len());
        // SAFETY: AVX-512F is present (checked above).
        unsafe {
            super::super::run_avx512(|| fill_mapped_baseline(&mut wide.spare_capacity_mut()[..src.len()], &src, &f))
        };
        fill_mapped_baseline(&mut base.spare_capacity_mut()[..src.len()], &src, &f);
        // SAFETY: both loops wrote every element.
        unsafe {
            wide.set_len(src.len());
            base.set_len(src.len());
        }
        for ((x, a), b) in src.iter().zip(&wide).zip(&base) {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name}({x}): AVX-512 loop {a}, baseline loop {b}"
            );
        }
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx512_loop_gives_the_baseline_loop_bit_for_bit() {
        both_paths("exp", fast_math::exp_f32);
        both_paths("tanh", fast_math::tanh_f32);
        both_paths("erf", fast_math::erf_f32_inlined());
        both_paths("gelu_exact", gelu::erf_form_f32());
        both_paths("gelu_exact'", gelu::erf_form_derivative_f32());
        both_paths("gelu", gelu::tanh_form(fast_math::tanh_f32));
        both_paths("sigmoid", |a: f32| 1.0 / (1.0 + fast_math::exp_f32(-a)));
    }
}
