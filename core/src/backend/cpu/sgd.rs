//! The SGD update of one parameter in a single pass: the composition it replaces (weight
//! decay, velocity, Nesterov step, learning rate) read and wrote the parameter's size up to
//! eight times. Each operation is rounded in the element type in the composition's order, so
//! the results are the composition's bit for bit.

use std::mem::MaybeUninit;

use num_traits::Float;
use rayon::prelude::*;

use super::{HALVES_WIDENED, PARALLEL_MIN, dense, dense_run, host, of, wrap};
use crate::backend::SgdStep;
use crate::storage::{CpuBuffer, RawTensor};

/// The step's scalars in the element type, each rounded once from f64.
#[derive(Clone, Copy)]
struct Scalars<T> {
    lr: T,
    mu: T,
    wd: T,
    decay: bool,
    nesterov: bool,
}

impl<T: Float> Scalars<T> {
    fn new(s: &SgdStep) -> Scalars<T> {
        Scalars {
            lr: of(s.lr),
            mu: of(s.momentum),
            wd: of(s.weight_decay),
            decay: s.weight_decay != 0.0,
            nesterov: s.nesterov,
        }
    }

    /// The gradient with its L2 term.
    #[inline(always)]
    fn gradient(&self, p: T, g: T) -> T {
        if self.decay { g + p * self.wd } else { g }
    }

    /// `(p', v')` of one element with a velocity.
    #[inline(always)]
    fn with_velocity(&self, p: T, g: T, v: T) -> (T, T) {
        let g = self.gradient(p, g);
        let v1 = v * self.mu + g;
        let d = if self.nesterov { g + v1 * self.mu } else { v1 };
        (p - d * self.lr, v1)
    }
}

/// Elements per task when the update is split across threads.
const CHUNK: usize = 1 << 14;

/// `[p']` or `[p', v']` of contiguous operands of `n` elements, each written once.
fn update_all<T: Float + Send + Sync>(p: &[T], g: &[T], v: Option<&[T]>, s: Scalars<T>) -> Vec<T> {
    let n = p.len();
    let k = if v.is_some() { 2 } else { 1 };
    let mut out: Vec<T> = Vec::with_capacity(k * n);
    let (po, vo) = out.spare_capacity_mut()[..k * n].split_at_mut(n);
    let run = |base: usize, po: &mut [MaybeUninit<T>], vo: &mut [MaybeUninit<T>]| match v {
        Some(v) => {
            for (j, (po, vo)) in po.iter_mut().zip(vo).enumerate() {
                let i = base + j;
                let (q, v1) = s.with_velocity(p[i], g[i], v[i]);
                po.write(q);
                vo.write(v1);
            }
        }
        None => {
            for (j, po) in po.iter_mut().enumerate() {
                let i = base + j;
                po.write(p[i] - s.gradient(p[i], g[i]) * s.lr);
            }
        }
    };
    if n >= PARALLEL_MIN {
        if v.is_some() {
            po.par_chunks_mut(CHUNK)
                .zip(vo.par_chunks_mut(CHUNK))
                .enumerate()
                .for_each(|(c, (pc, vc))| run(c * CHUNK, pc, vc));
        } else {
            po.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(c, pc)| run(c * CHUNK, pc, &mut []));
        }
    } else {
        run(0, po, vo);
    }
    // SAFETY: the loops above wrote every one of the k n elements (po, and vo with a velocity).
    unsafe { out.set_len(k * n) };
    out
}

/// The update of `param` (f32 or f64; halves arrive widened), as `[k, ..shape]`.
pub(super) fn sgd_update(
    param: &RawTensor,
    grad: &RawTensor,
    velocity: Option<&RawTensor>,
    step: &SgdStep,
) -> RawTensor {
    let (p, g) = (dense(param), dense(grad));
    let v = velocity.map(dense);
    let mut shape = vec![if v.is_some() { 2 } else { 1 }];
    shape.extend_from_slice(&param.layout.shape);
    macro_rules! update {
        ($variant:ident) => {{
            let (CpuBuffer::$variant(pd), CpuBuffer::$variant(gd)) = (host(&p), host(&g)) else {
                unreachable!("sgd_update: the op layer passes operands of one float dtype")
            };
            let vd = v.as_ref().map(|v| match host(v) {
                CpuBuffer::$variant(vd) => dense_run(vd, &v.layout),
                _ => unreachable!("sgd_update: the op layer passes operands of one float dtype"),
            });
            let out = update_all(
                dense_run(pd, &p.layout),
                dense_run(gd, &g.layout),
                vd,
                Scalars::new(step),
            );
            wrap(out, &shape)
        }};
    }
    match host(&p) {
        CpuBuffer::F32(_) => update!(F32),
        CpuBuffer::F64(_) => update!(F64),
        CpuBuffer::F16(_) | CpuBuffer::BF16(_) => unreachable!("{HALVES_WIDENED}"),
        other => unreachable!("sgd_update of {}: the op layer accepts floats only", other.dtype()),
    }
}
