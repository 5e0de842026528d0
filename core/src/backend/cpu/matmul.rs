//! Matrix multiplication through the `gemm` crate, looping over (broadcast) batch axes.

use gemm::Parallelism;

use super::{host, to_vec, view, wrap};
use crate::layout::Layout;
use crate::storage::{CpuBuffer, RawTensor};

/// Work (m*n*k) from which one product uses all threads.
const PARALLEL_WORK: usize = 1 << 18;

/// Offsets of every matrix of a batched view, in row-major order of the batch axes.
fn batch_offsets(layout: &Layout) -> Vec<isize> {
    let nb = layout.rank() - 2;
    let mut offs = vec![layout.offset as isize];
    for ax in 0..nb {
        let mut next = Vec::with_capacity(offs.len() * layout.shape[ax]);
        for &o in &offs {
            for i in 0..layout.shape[ax] {
                next.push(o + i as isize * layout.strides[ax]);
            }
        }
        offs = next;
    }
    offs
}

fn gemm_typed<T: Copy + Default + 'static>(
    a: &[T],
    al: &Layout,
    b: &[T],
    bl: &Layout,
    zero: T,
    one: T,
) -> (Vec<T>, Vec<usize>) {
    let r = al.rank();
    let (m, k, n) = (al.shape[r - 2], al.shape[r - 1], bl.shape[r - 1]);
    let mut shape = al.shape[..r - 2].to_vec();
    shape.extend([m, n]);
    let a_offs = batch_offsets(al);
    let b_offs = batch_offsets(bl);
    let mut out = vec![T::default(); a_offs.len() * m * n];
    let par = if m * n * k >= PARALLEL_WORK {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    for (bi, (&ao, &bo)) in a_offs.iter().zip(&b_offs).enumerate() {
        if m * n == 0 {
            continue;
        }
        let dst = out[bi * m * n..].as_mut_ptr();
        // SAFETY: the layouts address only elements of `a` and `b` (they come from checked view
        // operations), `dst` has room for an m x n row-major block, and k == 0 is handled by
        // gemm (it writes beta * 0 = zero with read_dst false).
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                dst,
                1,
                n as isize,
                false,
                a.as_ptr().offset(ao),
                al.strides[r - 1],
                al.strides[r - 2],
                b.as_ptr().offset(bo),
                bl.strides[r - 1],
                bl.strides[r - 2],
                zero,
                one,
                false,
                false,
                false,
                par,
            );
        }
    }
    (out, shape)
}

fn matmul_i64(a: &[i64], al: &Layout, b: &[i64], bl: &Layout) -> (Vec<i64>, Vec<usize>) {
    let r = al.rank();
    let (m, k, n) = (al.shape[r - 2], al.shape[r - 1], bl.shape[r - 1]);
    let mut shape = al.shape[..r - 2].to_vec();
    shape.extend([m, n]);
    let mut out = Vec::new();
    for (&ao, &bo) in batch_offsets(al).iter().zip(&batch_offsets(bl)) {
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0i64;
                for p in 0..k {
                    let x = a[(ao + i as isize * al.strides[r - 2] + p as isize * al.strides[r - 1]) as usize];
                    let y = b[(bo + p as isize * bl.strides[r - 2] + j as isize * bl.strides[r - 1]) as usize];
                    acc = acc.wrapping_add(x.wrapping_mul(y));
                }
                out.push(acc);
            }
        }
    }
    (out, shape)
}

/// When one operand is shared by every batch (all its batch strides are zero, as after a
/// broadcast), the batch folds into one large product instead of many small ones:
/// `A [m,k] x B [batch, k, n]` becomes `A x [k, batch*n]`, and `A [batch, m, k] x B [k, n]`
/// becomes `[batch*m, k] x B`. Returns the folded result, or `None` when no fold applies.
fn folded<T: Copy + Default + Send + Sync + 'static>(
    a: &[T],
    al: &Layout,
    b: &[T],
    bl: &Layout,
    zero: T,
    one: T,
) -> Option<(Vec<T>, Vec<usize>)> {
    let r = al.rank();
    if r <= 2 {
        return None;
    }
    let batch = &al.shape[..r - 2];
    let count: usize = batch.iter().product();
    let (m, k, n) = (al.shape[r - 2], al.shape[r - 1], bl.shape[r - 1]);
    let shared = |l: &Layout| l.strides[..r - 2].iter().all(|&s| s == 0);
    let mut out_shape = batch.to_vec();
    out_shape.extend([m, n]);
    if shared(bl) && !shared(al) {
        // [batch*m, k] x [k, n]: a's rows are stacked (copied to contiguous when needed).
        let rows = to_vec(&view(a, al));
        let al2 = Layout::contiguous(&[count * m, k]);
        let bl2 = Layout {
            shape: vec![k, n],
            strides: bl.strides[r - 2..].to_vec(),
            offset: bl.offset,
        };
        let (out, _) = gemm_typed(&rows, &al2, b, &bl2, zero, one);
        return Some((out, out_shape));
    }
    if shared(al) && !shared(bl) {
        // [m, k] x [k, batch*n]: b's batch moves next to its columns.
        let bv = view(b, bl);
        let mut perm: Vec<usize> = vec![r - 2];
        perm.extend(0..r - 2);
        perm.push(r - 1);
        let cols = to_vec(&bv.permuted_axes(perm));
        let al2 = Layout {
            shape: vec![m, k],
            strides: al.strides[r - 2..].to_vec(),
            offset: al.offset,
        };
        let bl2 = Layout::contiguous(&[k, count * n]);
        let (prod, _) = gemm_typed(a, &al2, &cols, &bl2, zero, one);
        // prod is [m, batch, n]; the result is [batch, m, n].
        let pv = view(&prod, &Layout::contiguous(&[m, count, n]));
        let out = to_vec(&pv.permuted_axes(vec![1, 0, 2]));
        return Some((out, out_shape));
    }
    None
}

/// Batched matmul kernel.
pub(super) fn matmul(a: &RawTensor, b: &RawTensor) -> RawTensor {
    match (host(a), host(b)) {
        (CpuBuffer::F32(x), CpuBuffer::F32(y)) => {
            let (out, shape) = folded(x, &a.layout, y, &b.layout, 0.0f32, 1.0f32)
                .unwrap_or_else(|| gemm_typed(x, &a.layout, y, &b.layout, 0.0f32, 1.0f32));
            wrap(out, &shape)
        }
        (CpuBuffer::F64(x), CpuBuffer::F64(y)) => {
            let (out, shape) = folded(x, &a.layout, y, &b.layout, 0.0f64, 1.0f64)
                .unwrap_or_else(|| gemm_typed(x, &a.layout, y, &b.layout, 0.0f64, 1.0f64));
            wrap(out, &shape)
        }
        (CpuBuffer::I64(x), CpuBuffer::I64(y)) => {
            let (out, shape) = matmul_i64(x, &a.layout, y, &b.layout);
            wrap(out, &shape)
        }
        _ => unreachable!("matmul dtypes are checked by the op layer"),
    }
}
