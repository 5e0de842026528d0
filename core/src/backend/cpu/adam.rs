//! The Adam update of one parameter in a single pass: the composition of elementwise ops it
//! replaces read and wrote the parameter's size a dozen times. Each operation is rounded in the
//! element type in the composition's order, so the results are the composition's bit for bit.

use std::mem::MaybeUninit;

use num_traits::Float;
use rayon::prelude::*;

use super::{HALVES_WIDENED, PARALLEL_MIN, dense, dense_run, host, of, wrap};
use crate::backend::AdamStep;
use crate::storage::{CpuBuffer, RawTensor};

/// The step's scalars in the element type, each formed in f64 and rounded once (the bias
/// corrections from the step number `t`).
struct Scalars<T> {
    lr: T,
    b1: T,
    b2: T,
    one_minus_b1: T,
    one_minus_b2: T,
    eps: T,
    wd: T,
    lr_wd: T,
    c1: T,
    c2: T,
    coupled: bool,
    decoupled: bool,
}

impl<T: Float> Scalars<T> {
    fn new(s: &AdamStep, t: i64) -> Scalars<T> {
        Scalars {
            lr: of(s.lr),
            b1: of(s.beta1),
            b2: of(s.beta2),
            one_minus_b1: of(1.0 - s.beta1),
            one_minus_b2: of(1.0 - s.beta2),
            eps: of(s.eps),
            wd: of(s.weight_decay),
            lr_wd: of(s.lr * s.weight_decay),
            c1: of(1.0 - s.beta1.powf(t as f64)),
            c2: of(1.0 - s.beta2.powf(t as f64)),
            coupled: s.weight_decay != 0.0 && !s.decoupled,
            decoupled: s.weight_decay != 0.0 && s.decoupled,
        }
    }

    /// `(p', m', v')` of one element.
    #[inline(always)]
    fn update(&self, p: T, g: T, m: T, v: T) -> (T, T, T) {
        let g = if self.coupled { g + p * self.wd } else { g };
        let m1 = m * self.b1 + g * self.one_minus_b1;
        let v1 = v * self.b2 + (g * g) * self.one_minus_b2;
        let step = (m1 / self.c1) / ((v1 / self.c2).sqrt() + self.eps) * self.lr;
        let mut q = p - step;
        if self.decoupled {
            q = q - p * self.lr_wd;
        }
        (q, m1, v1)
    }
}

/// Elements per task when the update is split across threads.
const CHUNK: usize = 1 << 14;

/// `[p', m', v']` of contiguous operands of `n` elements, each element written once (no
/// zero-fill of the output first).
fn update_all<T: Float + Send + Sync>(p: &[T], g: &[T], m: &[T], v: &[T], s: Scalars<T>) -> Vec<T> {
    let n = p.len();
    let mut out: Vec<T> = Vec::with_capacity(3 * n);
    let spare = &mut out.spare_capacity_mut()[..3 * n];
    let (po, rest) = spare.split_at_mut(n);
    let (mo, vo) = rest.split_at_mut(n);
    let run = |base: usize, po: &mut [MaybeUninit<T>], mo: &mut [MaybeUninit<T>], vo: &mut [MaybeUninit<T>]| {
        for j in 0..po.len() {
            let i = base + j;
            let (q, m1, v1) = s.update(p[i], g[i], m[i], v[i]);
            po[j].write(q);
            mo[j].write(m1);
            vo[j].write(v1);
        }
    };
    if n >= PARALLEL_MIN {
        po.par_chunks_mut(CHUNK)
            .zip(mo.par_chunks_mut(CHUNK))
            .zip(vo.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(k, ((pc, mc), vc))| run(k * CHUNK, pc, mc, vc));
    } else {
        run(0, po, mo, vo);
    }
    // SAFETY: the loops above wrote every one of the 3n elements (po, mo and vo cover them).
    unsafe { out.set_len(3 * n) };
    out
}

/// The update of `param` (f32 or f64; halves arrive widened), as `[3, ..shape]`.
pub(super) fn adam_update(
    param: &RawTensor,
    grad: &RawTensor,
    m: &RawTensor,
    v: &RawTensor,
    count: &RawTensor,
    step: &AdamStep,
) -> RawTensor {
    let CpuBuffer::I64(c) = host(count) else {
        unreachable!("adam_update: the op layer passes an i64 step count")
    };
    let t = c[count.layout.offset];
    let (p, g, m, v) = (dense(param), dense(grad), dense(m), dense(v));
    let mut shape = vec![3];
    shape.extend_from_slice(&param.layout.shape);
    match (host(&p), host(&g), host(&m), host(&v)) {
        (CpuBuffer::F32(pd), CpuBuffer::F32(gd), CpuBuffer::F32(md), CpuBuffer::F32(vd)) => {
            let out = update_all(
                dense_run(pd, &p.layout),
                dense_run(gd, &g.layout),
                dense_run(md, &m.layout),
                dense_run(vd, &v.layout),
                Scalars::new(step, t),
            );
            wrap(out, &shape)
        }
        (CpuBuffer::F64(pd), CpuBuffer::F64(gd), CpuBuffer::F64(md), CpuBuffer::F64(vd)) => {
            let out = update_all(
                dense_run(pd, &p.layout),
                dense_run(gd, &g.layout),
                dense_run(md, &m.layout),
                dense_run(vd, &v.layout),
                Scalars::new(step, t),
            );
            wrap(out, &shape)
        }
        (CpuBuffer::F16(_) | CpuBuffer::BF16(_), ..) => unreachable!("{HALVES_WIDENED}"),
        _ => unreachable!("adam_update: the op layer passes four tensors of one float dtype"),
    }
}
