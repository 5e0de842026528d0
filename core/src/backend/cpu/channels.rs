//! Batch normalisation's kernels over `x` `[A, C, B]` (contiguous; channel `c` is the `A`
//! runs of `B` values at `(a * C + c) * B`): the mean and biased variance of every channel
//! (two passes, the second over the deviations, so no cancellation), and the Jacobian product
//! of the standardisation, `rstd (v - mean(v) - y mean(v y))` per channel from the forward's
//! `rstd` (one pass for the sums, one to write), where the composition of primitives took a
//! kernel per term; batch norm's backward (its sums, and the input gradient from them); and
//! the output pass `(x - mean) scale + shift`.
//!
//! Channels are split across threads for the sums; the result is written in parallel over the
//! `A` blocks. Sums run in `LANES` partial sums per block of a run, accumulated in f64.

use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::rows::RowFloat;
use super::{PARALLEL_MIN, dense, dense_run, host, of, with_wide_loops, wrap};
use crate::storage::{CpuBuffer, RawTensor};

/// Lanes of the partial sums of a run.
const LANES: usize = 8;

/// Elements summed in `T` before the partial sums move to f64 (long runs keep their precision).
const BLOCK: usize = 2048;

/// The sum of `f(a[j], b[j])` over two runs of one length: `LANES` partial sums in `T` per
/// block of `BLOCK` elements, the blocks added in f64.
#[inline(always)]
fn pair_sum<T: RowFloat>(a: &[T], b: &[T], f: impl Fn(T, T) -> T) -> f64 {
    let mut total = 0.0;
    for (a, b) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let mut acc = [T::zero(); LANES];
        let (mut ca, mut cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        for (x, y) in (&mut ca).zip(&mut cb) {
            for k in 0..LANES {
                acc[k] = acc[k] + f(x[k], y[k]);
            }
        }
        for (&x, &y) in ca.remainder().iter().zip(cb.remainder()) {
            acc[0] = acc[0] + f(x, y);
        }
        total += acc.iter().fold(0.0, |s, &v| s + v.to_f64().unwrap_or(f64::NAN));
    }
    total
}

/// The dimensions `(A, C, B)` of a `[A, C, B]` tensor.
fn dims(x: &RawTensor) -> (usize, usize, usize) {
    match x.layout.shape[..] {
        [a, c, b] => (a, c, b),
        ref s => unreachable!("internal error: channel kernels take [A, C, B], got {s:?}"),
    }
}

/// `f(c)` for every channel, in parallel when the tensor is large.
fn per_channel<R: Send>(c: usize, numel: usize, f: impl Fn(usize) -> R + Sync + Send) -> Vec<R> {
    if numel >= PARALLEL_MIN {
        (0..c).into_par_iter().map(|ch| with_wide_loops(|| f(ch))).collect()
    } else {
        (0..c).map(f).collect()
    }
}

/// `write` on every `block`-long chunk of `out` (one `a` of `[A, C, B]`) with its index, in
/// parallel when `out` is large.
fn for_each_block<T: Send>(out: &mut [T], block: usize, write: impl Fn((usize, &mut [T])) + Sync + Send) {
    if out.len() >= PARALLEL_MIN {
        out.par_chunks_mut(block)
            .enumerate()
            .for_each(|job| with_wide_loops(|| write(job)));
    } else {
        out.chunks_mut(block).enumerate().for_each(write);
    }
}

/// A buffer of `len` elements whose `block`-long chunks `write` fills (each with its index,
/// in parallel when large), not zeroed first (a zeroing pass was a fifth of these kernels'
/// memory traffic). `write` must write every element of its chunk.
fn written_blocks<T: Send>(
    len: usize,
    block: usize,
    write: impl Fn((usize, &mut [MaybeUninit<T>])) + Sync + Send,
) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    for_each_block(&mut out.spare_capacity_mut()[..len], block, write);
    // SAFETY: the chunks cover the buffer and `write` wrote each whole (the callers zip every
    // run of a chunk with an input run of its length).
    unsafe { out.set_len(len) };
    out
}

/// The mean and biased variance of every channel of `x` (f32 or f64).
fn moments_typed<T: RowFloat>(x: &[T], (a, c, b): (usize, usize, usize)) -> Vec<T> {
    let n = (a * b) as f64;
    let stats = per_channel(c, x.len(), |ch| {
        let run = |i: usize| &x[(i * c + ch) * b..(i * c + ch + 1) * b];
        let mean = (0..a).map(|i| pair_sum(run(i), run(i), |x, _| x)).sum::<f64>() / n;
        let m = of::<T>(mean);
        let var = (0..a)
            .map(|i| pair_sum(run(i), run(i), |x, _| (x - m) * (x - m)))
            .sum::<f64>()
            / n;
        (m, of::<T>(var))
    });
    stats.iter().map(|s| s.0).chain(stats.iter().map(|s| s.1)).collect()
}

/// The mean and biased variance of every channel of `x` `[A, C, B]` (f32 or f64; halves
/// arrive widened), as `[2, C]`: the means, then the variances.
pub(super) fn channel_moments(x: &RawTensor) -> RawTensor {
    let x = dense(x);
    let d = dims(&x);
    match host(&x) {
        CpuBuffer::F32(v) => wrap(moments_typed(dense_run(v, &x.layout), d), &[2, d.1]),
        CpuBuffer::F64(v) => wrap(moments_typed(dense_run(v, &x.layout), d), &[2, d.1]),
        other => unreachable!(
            "channel moments of {}: the op layer passes floats (halves widened)",
            other.dtype()
        ),
    }
}

/// `rstd (v - mean(v) - y mean(v y))` per channel, with `rstd` given per channel.
fn backward_typed<T: RowFloat>(y: &[T], v: &[T], rstd: &[T], (a, c, b): (usize, usize, usize)) -> Vec<T> {
    let n = (a * b) as f64;
    let factors = per_channel(c, y.len(), |ch| {
        let (mut sv, mut svy) = (0.0, 0.0);
        for i in 0..a {
            let at = (i * c + ch) * b;
            let (yr, vr) = (&y[at..at + b], &v[at..at + b]);
            sv += pair_sum(vr, vr, |p, _| p);
            svy += pair_sum(vr, yr, |p, q| p * q);
        }
        (rstd[ch], of::<T>(sv / n), of::<T>(svy / n))
    });
    let write = |(i, block): (usize, &mut [MaybeUninit<T>])| {
        for (ch, o) in block.chunks_mut(b.max(1)).enumerate() {
            let (rstd, mv, mvy) = factors[ch];
            let at = (i * c + ch) * b;
            let (yr, vr) = (&y[at..at + o.len()], &v[at..at + o.len()]);
            for ((o, &yv), &vv) in o.iter_mut().zip(yr).zip(vr) {
                o.write(rstd * (vv - mv - yv * mvy));
            }
        }
    };
    written_blocks(y.len(), (c * b).max(1), write)
}

/// The Jacobian product of the per-channel standardisation of a `[A, C, B]` tensor at `v`,
/// from its output `y` and the channels' `rstd` `[C]` (one float dtype; halves arrive
/// widened).
pub(super) fn channel_norm_backward(y: &RawTensor, v: &RawTensor, rstd: &RawTensor) -> RawTensor {
    let (y, v, rstd) = (dense(y), dense(v), dense(rstd));
    let d = dims(&y);
    let shape = &y.layout.shape;
    match (host(&y), host(&v), host(&rstd)) {
        (CpuBuffer::F32(yd), CpuBuffer::F32(vd), CpuBuffer::F32(rd)) => wrap(
            backward_typed(
                dense_run(yd, &y.layout),
                dense_run(vd, &v.layout),
                dense_run(rd, &rstd.layout),
                d,
            ),
            shape,
        ),
        (CpuBuffer::F64(yd), CpuBuffer::F64(vd), CpuBuffer::F64(rd)) => wrap(
            backward_typed(
                dense_run(yd, &y.layout),
                dense_run(vd, &v.layout),
                dense_run(rd, &rstd.layout),
                d,
            ),
            shape,
        ),
        (p, q, r) => unreachable!(
            "channel norm backward of {}, {} and {}: the op layer passes one float dtype (halves widened)",
            p.dtype(),
            q.dtype(),
            r.dtype()
        ),
    }
}

/// `(sum(g x_hat), sum(g))` of every channel (see `Backend::batch_norm_backward_sums`).
fn batch_norm_sums_typed<T: RowFloat>(
    x: &[T],
    g: &[T],
    (mean, rstd): (&[T], &[T]),
    (a, c, b): (usize, usize, usize),
) -> Vec<(T, T)> {
    per_channel(c, x.len(), |ch| {
        let m = mean[ch];
        let (mut s1, mut s2) = (0.0, 0.0);
        for i in 0..a {
            let at = (i * c + ch) * b;
            let (xr, gr) = (&x[at..at + b], &g[at..at + b]);
            s1 += pair_sum(gr, gr, |p, _| p);
            s2 += pair_sum(gr, xr, |p, q| p * (q - m));
        }
        // s2 is sum(g (x - mean)); times rstd it is sum(g x_hat).
        (of::<T>(s2) * rstd[ch], of::<T>(s1))
    })
}

/// `dx = gamma rstd (g - mean(g) - x_hat mean(g x_hat))` into `dx`, with the channels'
/// `(mean(g x_hat), mean(g))` in `means`.
fn batch_norm_input_typed<T: RowFloat>(
    dx: &mut [MaybeUninit<T>],
    (x, g): (&[T], &[T]),
    (mean, rstd, gamma): (&[T], &[T], &[T]),
    means: &[(T, T)],
    (c, b): (usize, usize),
) {
    let write = |(i, block): (usize, &mut [MaybeUninit<T>])| {
        for (ch, o) in block.chunks_mut(b.max(1)).enumerate() {
            let (mgx, mg) = means[ch];
            let (m, r) = (mean[ch], rstd[ch]);
            let k = gamma[ch] * r;
            let at = (i * c + ch) * b;
            let (xr, gr) = (&x[at..at + o.len()], &g[at..at + o.len()]);
            for ((o, &xv), &gv) in o.iter_mut().zip(xr).zip(gr) {
                o.write(k * (gv - mg - (xv - m) * r * mgx));
            }
        }
    };
    for_each_block(dx, (c * b).max(1), write);
}

/// Batch normalisation's backward pass per channel (see `Backend::batch_norm_backward`):
/// `[dx, dgamma, dbeta]` packed.
fn batch_norm_backward_typed<T: RowFloat>(
    x: &[T],
    g: &[T],
    (mean, rstd, gamma): (&[T], &[T], &[T]),
    (a, c, b): (usize, usize, usize),
) -> Vec<T> {
    let sums = batch_norm_sums_typed(x, g, (mean, rstd), (a, c, b));
    let len = x.len() + 2 * c;
    let mut out = Vec::with_capacity(len);
    let (dx, tail) = out.spare_capacity_mut()[..len].split_at_mut(x.len());
    for (ch, &(s2, s1)) in sums.iter().enumerate() {
        tail[ch].write(s2);
        tail[c + ch].write(s1);
    }
    let n = of::<T>((a * b) as f64);
    let means: Vec<(T, T)> = sums.iter().map(|&(s2, s1)| (s2 / n, s1 / n)).collect();
    batch_norm_input_typed(dx, (x, g), (mean, rstd, gamma), &means, (c, b));
    // SAFETY: the tail's 2 C elements were written above and `dx` whole by the input pass.
    unsafe { out.set_len(len) };
    out
}

/// Batch normalisation's backward pass over `x` `[A, C, B]` (see `Backend::batch_norm_backward`;
/// one float dtype, halves arrive widened).
pub(super) fn batch_norm_backward(
    x: &RawTensor,
    g: &RawTensor,
    mean: &RawTensor,
    rstd: &RawTensor,
    gamma: &RawTensor,
) -> RawTensor {
    let (x, g, mean, rstd, gamma) = (dense(x), dense(g), dense(mean), dense(rstd), dense(gamma));
    let d = dims(&x);
    let len = x.layout.numel() + 2 * d.1;
    macro_rules! typed {
        ($variant:ident) => {
            match (host(&x), host(&g), host(&mean), host(&rstd), host(&gamma)) {
                (
                    CpuBuffer::$variant(xd),
                    CpuBuffer::$variant(gd),
                    CpuBuffer::$variant(md),
                    CpuBuffer::$variant(rd),
                    CpuBuffer::$variant(wd),
                ) => Some(wrap(
                    batch_norm_backward_typed(
                        dense_run(xd, &x.layout),
                        dense_run(gd, &g.layout),
                        (
                            dense_run(md, &mean.layout),
                            dense_run(rd, &rstd.layout),
                            dense_run(wd, &gamma.layout),
                        ),
                        d,
                    ),
                    &[len],
                )),
                _ => None,
            }
        };
    }
    typed!(F32).or_else(|| typed!(F64)).unwrap_or_else(|| {
        unreachable!(
            "batch norm backward of {} and {}: the op layer passes one float dtype (halves widened)",
            x.dtype(),
            g.dtype()
        )
    })
}

/// `(sum(g x_hat), sum(g))` of every channel of `x` `[A, C, B]` as `[2, C]` (see
/// `Backend::batch_norm_backward_sums`; one float dtype, halves arrive widened).
pub(super) fn batch_norm_backward_sums(x: &RawTensor, g: &RawTensor, mean: &RawTensor, rstd: &RawTensor) -> RawTensor {
    let (x, g, mean, rstd) = (dense(x), dense(g), dense(mean), dense(rstd));
    let d = dims(&x);
    fn rows<T: Clone>(sums: Vec<(T, T)>) -> Vec<T> {
        let (gx, g): (Vec<T>, Vec<T>) = sums.into_iter().unzip();
        [gx, g].concat()
    }
    match (host(&x), host(&g), host(&mean), host(&rstd)) {
        (CpuBuffer::F32(xd), CpuBuffer::F32(gd), CpuBuffer::F32(md), CpuBuffer::F32(rd)) => wrap(
            rows(batch_norm_sums_typed(
                dense_run(xd, &x.layout),
                dense_run(gd, &g.layout),
                (dense_run(md, &mean.layout), dense_run(rd, &rstd.layout)),
                d,
            )),
            &[2, d.1],
        ),
        (CpuBuffer::F64(xd), CpuBuffer::F64(gd), CpuBuffer::F64(md), CpuBuffer::F64(rd)) => wrap(
            rows(batch_norm_sums_typed(
                dense_run(xd, &x.layout),
                dense_run(gd, &g.layout),
                (dense_run(md, &mean.layout), dense_run(rd, &rstd.layout)),
                d,
            )),
            &[2, d.1],
        ),
        (p, ..) => unreachable!(
            "batch norm sums of {}: the op layer passes one float dtype (halves widened)",
            p.dtype()
        ),
    }
}

/// Batch normalisation's input gradient over `x` `[A, C, B]` from the channels' `means` `[2,
/// C]` (see `Backend::batch_norm_backward_input`; one float dtype, halves arrive widened).
pub(super) fn batch_norm_backward_input(
    x: &RawTensor,
    g: &RawTensor,
    (mean, rstd, gamma): (&RawTensor, &RawTensor, &RawTensor),
    means: &RawTensor,
) -> RawTensor {
    let (x, g, means) = (dense(x), dense(g), dense(means));
    let (mean, rstd, gamma) = (dense(mean), dense(rstd), dense(gamma));
    let (_, c, b) = dims(&x);
    macro_rules! typed {
        ($variant:ident) => {
            match (
                host(&x),
                host(&g),
                host(&mean),
                host(&rstd),
                host(&gamma),
                host(&means),
            ) {
                (
                    CpuBuffer::$variant(xd),
                    CpuBuffer::$variant(gd),
                    CpuBuffer::$variant(md),
                    CpuBuffer::$variant(rd),
                    CpuBuffer::$variant(wd),
                    CpuBuffer::$variant(sd),
                ) => {
                    let sd = dense_run(sd, &means.layout);
                    let pairs: Vec<_> = (0..c).map(|ch| (sd[ch], sd[c + ch])).collect();
                    let len = x.layout.numel();
                    let mut dx = Vec::with_capacity(len);
                    batch_norm_input_typed(
                        &mut dx.spare_capacity_mut()[..len],
                        (dense_run(xd, &x.layout), dense_run(gd, &g.layout)),
                        (
                            dense_run(md, &mean.layout),
                            dense_run(rd, &rstd.layout),
                            dense_run(wd, &gamma.layout),
                        ),
                        &pairs,
                        (c, b),
                    );
                    // SAFETY: the input pass wrote every element of `dx`.
                    unsafe { dx.set_len(len) };
                    Some(wrap(dx, &x.layout.shape))
                }
                _ => None,
            }
        };
    }
    typed!(F32).or_else(|| typed!(F64)).unwrap_or_else(|| {
        unreachable!(
            "batch norm input gradient of {} with means of {}: the op layer passes one float dtype (halves widened)",
            x.dtype(),
            means.dtype()
        )
    })
}

/// `(x - mean) scale + shift` per channel into a new buffer.
fn scale_shift_typed<T: RowFloat>(x: &[T], (mean, scale, shift): (&[T], &[T], &[T]), (c, b): (usize, usize)) -> Vec<T> {
    let write = |(i, block): (usize, &mut [MaybeUninit<T>])| {
        for (ch, o) in block.chunks_mut(b.max(1)).enumerate() {
            let (m, s, t) = (mean[ch], scale[ch], shift[ch]);
            let at = (i * c + ch) * b;
            for (o, &xv) in o.iter_mut().zip(&x[at..at + b]) {
                o.write((xv - m) * s + t);
            }
        }
    };
    written_blocks(x.len(), (c * b).max(1), write)
}

/// `(x - mean) scale + shift` per channel of `x` `[A, C, B]` (see
/// `Backend::channel_scale_shift`; one float dtype, halves arrive widened).
pub(super) fn channel_scale_shift(x: &RawTensor, mean: &RawTensor, scale: &RawTensor, shift: &RawTensor) -> RawTensor {
    let (x, mean, scale, shift) = (dense(x), dense(mean), dense(scale), dense(shift));
    let (_, c, b) = dims(&x);
    let shape = &x.layout.shape;
    macro_rules! typed {
        ($variant:ident) => {
            match (host(&x), host(&mean), host(&scale), host(&shift)) {
                (
                    CpuBuffer::$variant(xd),
                    CpuBuffer::$variant(md),
                    CpuBuffer::$variant(sd),
                    CpuBuffer::$variant(td),
                ) => {
                    let per_channel = (
                        dense_run(md, &mean.layout),
                        dense_run(sd, &scale.layout),
                        dense_run(td, &shift.layout),
                    );
                    Some(wrap(
                        scale_shift_typed(dense_run(xd, &x.layout), per_channel, (c, b)),
                        shape,
                    ))
                }
                _ => None,
            }
        };
    }
    typed!(F32).or_else(|| typed!(F64)).unwrap_or_else(|| {
        unreachable!(
            "channel scale and shift of {}: the op layer passes one float dtype (halves widened)",
            x.dtype()
        )
    })
}
