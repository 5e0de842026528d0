//! The shifted-row products ([`TapGrid`]) in f32 through our GEMM, its `B` panels packed
//! straight from the rows (no im2col matrix is written); other dtypes and CPUs without AVX-512
//! take the composed form (gather, then matmul).

use super::CpuBackend;
use crate::backend::TapGrid;
use crate::backend::taps::{tap_matmul_composed, tap_outer_composed};
use crate::storage::RawTensor;
#[cfg(target_arch = "x86_64")]
use {super::host, crate::storage::CpuBuffer};

/// `w x cols(x)` (see [`crate::backend::Backend::tap_matmul`]); halves arrive widened.
pub(super) fn tap_matmul(be: &CpuBackend, w: &RawTensor, x: &RawTensor, taps: &TapGrid) -> RawTensor {
    let r = w.layout.rank();
    taps.require("tap_matmul", x.shape(), w.shape()[r - 1]);
    #[cfg(target_arch = "x86_64")]
    if fusable(w, x) {
        return fused::product(w, x, taps, false);
    }
    tap_matmul_composed(be, w, x, taps)
}

/// `dy x cols(x)^T` (see [`crate::backend::Backend::tap_outer`]); halves arrive widened.
pub(super) fn tap_outer(be: &CpuBackend, dy: &RawTensor, x: &RawTensor, taps: &TapGrid) -> RawTensor {
    let r = dy.layout.rank();
    taps.require("tap_outer", x.shape(), x.shape()[r - 2] * taps.taps());
    assert_eq!(
        dy.shape()[r - 1],
        taps.len,
        "internal error: tap_outer of {:?} over taps {taps:?}",
        dy.shape()
    );
    #[cfg(target_arch = "x86_64")]
    if fusable(dy, x) {
        return fused::product(dy, x, taps, true);
    }
    tap_outer_composed(be, dy, x, taps)
}

/// Whether the fused product runs: f32 operands, and a CPU with our AVX-512 GEMM.
#[cfg(target_arch = "x86_64")]
fn fusable(a: &RawTensor, x: &RawTensor) -> bool {
    matches!((host(a), host(x)), (CpuBuffer::F32(_), CpuBuffer::F32(_))) && super::sgemm_avx512::available()
}

#[cfg(target_arch = "x86_64")]
mod fused {
    use super::super::matmul::batch_offsets;
    use super::super::sgemm_avx512::{Axis, Rhs, sgemm_rhs};
    use super::super::{host, wrap};
    use crate::backend::TapGrid;
    use crate::storage::{CpuBuffer, RawTensor};

    /// One product per batch of the leading axes: `lhs [.., m, k] x cols(x)` (`k = C * T`), or
    /// with `outer`, `lhs [.., m, len] x cols(x)^T`. The operands are f32 views whose leading
    /// axes have one shape, and the taps fit `x`'s rows (checked by the callers).
    pub(super) fn product(lhs: &RawTensor, x: &RawTensor, taps: &TapGrid, outer: bool) -> RawTensor {
        let (CpuBuffer::F32(a), CpuBuffer::F32(b)) = (host(lhs), host(x)) else {
            unreachable!("the callers match f32 operands")
        };
        let (al, xl) = (&lhs.layout, &x.layout);
        let r = al.rank();
        let (m, channels) = (al.shape[r - 2], xl.shape[r - 2]);
        let (sc, sl) = (xl.strides[r - 2], xl.strides[r - 1]);
        let depth = channels * taps.taps();
        // Row c * T + t of the implicit matrix starts at c * sc + start(t) * sl.
        let table: Vec<isize> = (0..channels)
            .flat_map(|c| (0..taps.taps()).map(move |t| c as isize * sc + taps.start(t) * sl))
            .collect();
        let (n, k, rhs) = if outer {
            (depth, taps.len, (Axis::Stride(sl), Axis::Table(table.as_ptr())))
        } else {
            (taps.len, depth, (Axis::Table(table.as_ptr()), Axis::Stride(sl)))
        };
        let mut shape = al.shape[..r - 2].to_vec();
        shape.extend([m, n]);
        let (a_offs, b_offs) = (batch_offsets(al), batch_offsets(xl));
        let total = a_offs.len() * m * n;
        let mut out: Vec<f32> = Vec::with_capacity(total);
        for (bi, (&ao, &bo)) in a_offs.iter().zip(&b_offs).enumerate() {
            let b = Rhs {
                ptr: b.as_ptr().wrapping_offset(bo),
                rows: rhs.0,
                cols: rhs.1,
            };
            // SAFETY: AVX-512 was detected by the callers. The layouts address only elements
            // of their buffers (`RawTensor`'s invariant), the taps read inside the rows of `x`
            // (`TapGrid::require` in the callers), so every element (p, j) of `b` is an element
            // of `x`; the table has an entry per row (or column) of the implicit matrix and
            // outlives the call; `out` has room for m * n floats from bi * m * n, and `sgemm_rhs`
            // writes all of them.
            unsafe {
                sgemm_rhs(
                    m,
                    n,
                    k,
                    a.as_ptr().offset(ao),
                    al.strides[r - 2],
                    al.strides[r - 1],
                    b,
                    out.as_mut_ptr().add(bi * m * n),
                )
            };
        }
        // SAFETY: every product wrote its m * n elements (none when m * n == 0).
        unsafe { out.set_len(total) };
        wrap(out, &shape)
    }
}
