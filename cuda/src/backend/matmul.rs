//! Batched matmul on cuBLAS. Core's matrices are row-major; cuBLAS's are column-major. A
//! row-major `C = A B` is the column-major `C^T = B^T A^T`, and a row-major matrix read as
//! column-major *is* its transpose, so the call swaps the operands instead of copying them.
//! Transposed views (column-major in memory, as `w.transpose()` in a backward pass) pass
//! `CUBLAS_OP_T` instead of being copied; only views that are neither (or whose batch axes do
//! not step uniformly) are copied first.

use std::borrow::Cow;

use nabla_core::DType;
use nabla_core::storage::RawTensor;

use super::CudaBackend;
use crate::api::{DeviceApi, GemmCall, GemmOperand};

/// How one operand of shape `[..., r, c]` lies in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MatrixView {
    /// The element offset of the first matrix.
    pub offset: usize,
    /// True when each matrix is column-major in memory (a transposed row-major matrix).
    pub col_major: bool,
    /// The leading dimension (the step between rows of a row-major matrix, between columns of
    /// a column-major one).
    pub ld: i64,
    /// The step between matrices of the batch (0 when the batch has one matrix or repeats it).
    pub batch_stride: i64,
}

/// The single step of the batch axes when they step through memory as one axis (extent-1 axes
/// ignored); `None` otherwise.
fn batch_stride(shape: &[usize], strides: &[isize]) -> Option<i64> {
    let mut merged: Option<(i64, i64)> = None;
    for (&n, &s) in shape.iter().zip(strides) {
        if n == 1 {
            continue;
        }
        let (n, s) = (n as i64, s as i64);
        if s < 0 {
            return None;
        }
        merged = match merged {
            None => Some((n, s)),
            Some((pn, ps)) if ps == s * n => Some((pn * n, s)),
            Some(_) => return None,
        };
    }
    Some(merged.map_or(0, |(_, s)| s))
}

/// How `shape`/`strides`/`offset` lies as a batch of matrices, when cuBLAS can read it as is.
pub(crate) fn matrix_view(shape: &[usize], strides: &[isize], offset: usize) -> Option<MatrixView> {
    let rank = shape.len();
    let (r, c) = (shape[rank - 2] as i64, shape[rank - 1] as i64);
    let (sr, sc) = (strides[rank - 2] as i64, strides[rank - 1] as i64);
    let batch_stride = batch_stride(&shape[..rank - 2], &strides[..rank - 2])?;
    let row_major = (sc == 1 || c == 1) && (r == 1 || sr >= c.max(1));
    if row_major {
        let ld = if r == 1 { c.max(1) } else { sr };
        return Some(MatrixView {
            offset,
            col_major: false,
            ld,
            batch_stride,
        });
    }
    let col_major = (sr == 1 || r == 1) && (c == 1 || sc >= r.max(1));
    if col_major {
        let ld = if c == 1 { r.max(1) } else { sc };
        return Some(MatrixView {
            offset,
            col_major: true,
            ld,
            batch_stride,
        });
    }
    None
}

fn as_i32(v: i64, what: &str) -> i64 {
    assert!(
        v <= i32::MAX as i64,
        "matmul on cuda: {what} = {v} exceeds cuBLAS's 32-bit sizes; split the product"
    );
    v
}

pub(super) fn matmul<A: DeviceApi>(be: &CudaBackend<A>, a: &RawTensor, b: &RawTensor) -> RawTensor {
    let dtype = a.dtype();
    if !matches!(dtype, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
        panic!(
            "matmul on cuda: {dtype} operands {:?} x {:?} are not supported (cuBLAS multiplies floats); \
             cast them to a float dtype or compute on the CPU",
            a.shape(),
            b.shape()
        );
    }
    let rank = a.shape().len();
    let (m, k, n) = (a.shape()[rank - 2], a.shape()[rank - 1], b.shape()[rank - 1]);
    let batch: usize = a.shape()[..rank - 2].iter().product();
    let mut out_shape = a.shape().to_vec();
    out_shape[rank - 1] = n;
    if batch * m * n == 0 {
        return be.empty(&out_shape, dtype);
    }
    if k == 0 {
        return super::elementwise::fill(be, &out_shape, dtype, 0.0);
    }
    let view = |x: &RawTensor| {
        let l = x.layout();
        matrix_view(l.shape(), l.strides(), l.offset())
    };
    // Operands cuBLAS cannot read as they lie are copied to row-major first.
    let (a, va) = match view(a) {
        Some(v) => (Cow::Borrowed(a), v),
        None => {
            let c = super::elementwise::copy(be, a);
            let v = view(&c).expect("a contiguous matrix batch is row-major");
            (Cow::Owned(c), v)
        }
    };
    let (b, vb) = match view(b) {
        Some(v) => (Cow::Borrowed(b), v),
        None => {
            let c = super::elementwise::copy(be, b);
            let v = view(&c).expect("a contiguous matrix batch is row-major");
            (Cow::Owned(c), v)
        }
    };
    let out = be.empty(&out_shape, dtype);
    let size = dtype.size_in_bytes();
    fn operand<'x, A: DeviceApi>(
        be: &CudaBackend<A>,
        x: &'x RawTensor,
        v: MatrixView,
        size: usize,
    ) -> GemmOperand<'x, A::Mem> {
        GemmOperand {
            mem: &be.buf(x).mem,
            offset: v.offset * size,
            transpose: v.col_major,
            ld: as_i32(v.ld, "a leading dimension"),
            batch_stride: v.batch_stride,
        }
    }
    // Column-major C^T [n, m] = op(B) [n, k] . op(A) [k, m].
    let call = GemmCall {
        dtype,
        m: as_i32(n as i64, "n"),
        n: as_i32(m as i64, "m"),
        k: as_i32(k as i64, "k"),
        a: operand(be, &b, vb, size),
        b: operand(be, &a, va, size),
        c: &be.buf(&out).mem,
        ldc: as_i32(n as i64, "the output's leading dimension"),
        c_stride: (m * n) as i64,
        batch: as_i32(batch as i64, "the batch"),
    };
    be.api
        .gemm(&call)
        .unwrap_or_else(|e| panic!("matmul on cuda: {:?} x {:?} {dtype}: {e}", a.shape(), b.shape()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_major_transposed_and_batched_views_need_no_copy() {
        // A contiguous [2, 3, 4] batch.
        assert_eq!(
            matrix_view(&[2, 3, 4], &[12, 4, 1], 5),
            Some(MatrixView {
                offset: 5,
                col_major: false,
                ld: 4,
                batch_stride: 12
            })
        );
        // Its transpose [2, 4, 3]: column-major with ld 4.
        assert_eq!(
            matrix_view(&[2, 4, 3], &[12, 1, 4], 0),
            Some(MatrixView {
                offset: 0,
                col_major: true,
                ld: 4,
                batch_stride: 12
            })
        );
        // A broadcast weight (batch stride 0) and a row slice (ld larger than the width).
        assert_eq!(matrix_view(&[3, 4, 5], &[0, 5, 1], 0).map(|v| v.batch_stride), Some(0));
        assert_eq!(
            matrix_view(&[4, 5], &[8, 1], 2).map(|v| (v.ld, v.col_major)),
            Some((8, false))
        );
        // Two batch axes that merge, and two that do not.
        assert_eq!(
            matrix_view(&[2, 3, 4, 5], &[60, 20, 5, 1], 0).map(|v| v.batch_stride),
            Some(20)
        );
        assert_eq!(matrix_view(&[2, 3, 4, 5], &[20, 40, 5, 1], 0), None);
        // Neither layout: a strided column step, and negative strides.
        assert_eq!(matrix_view(&[4, 5], &[10, 2], 0), None);
        assert_eq!(matrix_view(&[2, 4, 5], &[-20, 5, 1], 20), None);
    }
}
