//! Matrix multiplication, looping over (broadcast) batch axes: f32 through our AVX-512 kernel
//! (`sgemm_avx512`) on CPUs that have it, otherwise (and for f64) through the `gemm` crate.

use gemm::Parallelism;

use super::elementwise::copy_view;
use super::{host, wrap};
use crate::layout::Layout;
use crate::storage::{CpuBuffer, RawTensor};

/// Work (m*n*k) from which one product uses all threads.
const PARALLEL_WORK: usize = 1 << 18;

/// Offsets of every matrix of a batched view, in row-major order of the batch axes.
pub(super) fn batch_offsets(layout: &Layout) -> Vec<isize> {
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

/// Element types with a dense product kernel.
pub(super) trait GemmScalar: Copy + Default + Send + Sync + 'static {
    /// Whether [`GemmScalar::product`] writes every output element even when `k == 0`, so that
    /// the output may start uninitialised.
    fn writes_all() -> bool {
        false
    }

    /// Writes the `m x n` row-major product of the strided `m x k` matrix at `a` and `k x n`
    /// matrix at `b` into `dst`.
    ///
    /// # Safety
    /// The strides must address only readable elements; `dst` must be valid for `m * n` writes
    /// and, unless [`GemmScalar::writes_all`], initialised.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut Self,
        a: *const Self,
        a_rs: isize,
        a_cs: isize,
        b: *const Self,
        b_rs: isize,
        b_cs: isize,
    );

    /// [`GemmScalar::product`] on the calling thread only, into `dst` with row stride `ldc`
    /// (which is overwritten; it need not be initialised): for kernels that split their own
    /// work across threads.
    ///
    /// # Safety
    /// As for [`GemmScalar::product`], with `dst` valid for an `m x n` block of row stride
    /// `ldc >= n`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product_on_this_thread(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut Self,
        ldc: usize,
        a: *const Self,
        a_rs: isize,
        a_cs: isize,
        b: *const Self,
        b_rs: isize,
        b_cs: isize,
    );
}

/// The product through the `gemm` crate on the calling thread, overwriting the `m x n` block
/// of row stride `ldc` at `dst` (read_dst is false, so it is never read).
///
/// # Safety
/// As for [`GemmScalar::product_on_this_thread`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_crate_serial<T: Copy + 'static>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    ldc: usize,
    (a, a_rs, a_cs): (*const T, isize, isize),
    (b, b_rs, b_cs): (*const T, isize, isize),
    zero: T,
    one: T,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            ldc as isize,
            false,
            a,
            a_cs,
            a_rs,
            b,
            b_cs,
            b_rs,
            zero,
            one,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// The product through the `gemm` crate (all threads from `PARALLEL_WORK`).
///
/// # Safety
/// As for [`GemmScalar::product`]; `dst` must be initialised.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_crate<T: Copy + 'static>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    a: *const T,
    a_rs: isize,
    a_cs: isize,
    b: *const T,
    b_rs: isize,
    b_cs: isize,
    zero: T,
    one: T,
) {
    let par = if m * n * k >= PARALLEL_WORK {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    // SAFETY: forwarded from the caller; k == 0 is handled by gemm (it writes beta * 0 = zero
    // with read_dst false, and dst starts zeroed anyway).
    unsafe {
        gemm::gemm(
            m, n, k, dst, 1, n as isize, false, a, a_cs, a_rs, b, b_cs, b_rs, zero, one, false, false, false, par,
        );
    }
}

impl GemmScalar for f32 {
    #[cfg(target_arch = "x86_64")]
    fn writes_all() -> bool {
        super::sgemm_avx512::available()
    }

    unsafe fn product(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        a: *const f32,
        a_rs: isize,
        a_cs: isize,
        b: *const f32,
        b_rs: isize,
        b_cs: isize,
    ) {
        // Matrix-vector shapes waste most of the kernel's 32-column tile; the gemm crate's
        // vector path is faster there (0.005 vs 0.017 ms for 256x256 @ 256).
        #[cfg(target_arch = "x86_64")]
        if m >= SKINNY && n >= SKINNY && super::sgemm_avx512::available() {
            // SAFETY: AVX-512F and FMA were detected; the rest is the caller's contract.
            unsafe { super::sgemm_avx512::sgemm(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, dst) };
            return;
        }
        // SAFETY: `dst` is valid for m * n writes (the caller's contract); zeroing it first
        // makes it initialised for the gemm crate even when `writes_all` let it start
        // uninitialised.
        unsafe {
            std::ptr::write_bytes(dst, 0, m * n);
            gemm_crate(m, n, k, dst, a, a_rs, a_cs, b, b_rs, b_cs, 0.0, 1.0)
        };
    }

    unsafe fn product_on_this_thread(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f32,
        ldc: usize,
        a: *const f32,
        a_rs: isize,
        a_cs: isize,
        b: *const f32,
        b_rs: isize,
        b_cs: isize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if m >= SKINNY && n >= SKINNY && super::sgemm_avx512::available() {
            // SAFETY: AVX-512F and FMA were detected; the rest is the caller's contract.
            unsafe { super::sgemm_avx512::sgemm_on_this_thread(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, dst, ldc) };
            return;
        }
        // SAFETY: the caller's contract.
        unsafe { gemm_crate_serial((m, n, k), dst, ldc, (a, a_rs, a_cs), (b, b_rs, b_cs), 0.0, 1.0) };
    }
}

/// Below this many rows or columns f32 products go to the gemm crate.
const SKINNY: usize = 8;

impl GemmScalar for f64 {
    unsafe fn product(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f64,
        a: *const f64,
        a_rs: isize,
        a_cs: isize,
        b: *const f64,
        b_rs: isize,
        b_cs: isize,
    ) {
        // SAFETY: the caller's contract.
        unsafe { gemm_crate(m, n, k, dst, a, a_rs, a_cs, b, b_rs, b_cs, 0.0, 1.0) };
    }

    unsafe fn product_on_this_thread(
        m: usize,
        n: usize,
        k: usize,
        dst: *mut f64,
        ldc: usize,
        a: *const f64,
        a_rs: isize,
        a_cs: isize,
        b: *const f64,
        b_rs: isize,
        b_cs: isize,
    ) {
        // SAFETY: the caller's contract.
        unsafe { gemm_crate_serial((m, n, k), dst, ldc, (a, a_rs, a_cs), (b, b_rs, b_cs), 0.0, 1.0) };
    }
}

fn gemm_typed<T: GemmScalar>(a: &[T], al: &Layout, b: &[T], bl: &Layout) -> (Vec<T>, Vec<usize>) {
    assert!(
        al.fits(a.len()) && bl.fits(b.len()),
        "internal error: matmul layouts {al:?} / {bl:?} leave buffers of {} / {} elements",
        a.len(),
        b.len()
    );
    let r = al.rank();
    let (m, k, n) = (al.shape[r - 2], al.shape[r - 1], bl.shape[r - 1]);
    let mut shape = al.shape[..r - 2].to_vec();
    shape.extend([m, n]);
    let a_offs = batch_offsets(al);
    let b_offs = batch_offsets(bl);
    let total = a_offs.len() * m * n;
    let uninit = T::writes_all();
    let mut out: Vec<T> = if uninit {
        Vec::with_capacity(total)
    } else {
        vec![T::default(); total]
    };
    if m * n > 0 {
        for (bi, (&ao, &bo)) in a_offs.iter().zip(&b_offs).enumerate() {
            // SAFETY: the layouts address only elements of `a` and `b` (`RawTensor`'s
            // invariant, asserted at the top of this function), and `dst` has room for an
            // m x n row-major block of `out`'s
            // allocation (initialised unless the kernel writes every element).
            unsafe {
                T::product(
                    m,
                    n,
                    k,
                    out.as_mut_ptr().add(bi * m * n),
                    a.as_ptr().offset(ao),
                    al.strides[r - 2],
                    al.strides[r - 1],
                    b.as_ptr().offset(bo),
                    bl.strides[r - 2],
                    bl.strides[r - 1],
                )
            };
        }
    }
    if uninit {
        // SAFETY: the batches' products wrote all `total` elements (none when m * n == 0).
        unsafe { out.set_len(total) };
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
fn folded<T: GemmScalar>(a: &[T], al: &Layout, b: &[T], bl: &Layout) -> Option<(Vec<T>, Vec<usize>)> {
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
        // [batch*m, k] x [k, n]: a's rows are stacked, in place when its batch and row axes
        // merge into one strided axis, else copied to contiguous.
        let bl2 = Layout {
            shape: smallvec::smallvec![k, n],
            strides: bl.strides[r - 2..].into(),
            offset: bl.offset,
        };
        if let Some(stride) = merged_stride(&al.shape[..r - 1], &al.strides[..r - 1]) {
            let al2 = Layout {
                shape: smallvec::smallvec![count * m, k],
                strides: smallvec::smallvec![stride, al.strides[r - 1]],
                offset: al.offset,
            };
            let (out, _) = gemm_typed(a, &al2, b, &bl2);
            return Some((out, out_shape));
        }
        let rows = copy_view(a, al);
        let (out, _) = gemm_typed(&rows, &Layout::contiguous(&[count * m, k]), b, &bl2);
        return Some((out, out_shape));
    }
    if shared(al) && n == 1 {
        // Batched matrix-vector products: out [batch, m] = B [batch, k] x A^T [k, m], read in
        // place through strides (no copy in or out).
        if let Some(stride) = merged_stride(&bl.shape[..r - 2], &bl.strides[..r - 2]) {
            let lhs = Layout {
                shape: smallvec::smallvec![count, k],
                strides: smallvec::smallvec![stride, bl.strides[r - 2]],
                offset: bl.offset,
            };
            let rhs = Layout {
                shape: smallvec::smallvec![k, m],
                strides: smallvec::smallvec![al.strides[r - 1], al.strides[r - 2]],
                offset: al.offset,
            };
            let (out, _) = gemm_typed(b, &lhs, a, &rhs);
            return Some((out, out_shape));
        }
    }
    if shared(al) && !shared(bl) && n < FOLD_MAX_COLS {
        // [m, k] x [k, batch*n]: b's batch moves next to its columns. This costs a copy of b
        // and of the result, which only pays where each product alone would be too narrow
        // for the kernel's column tile (convolution weights times small images).
        let mut perm: Vec<usize> = vec![r - 2];
        perm.extend(0..r - 2);
        perm.push(r - 1);
        let cols = copy_view(b, &bl.permute(&perm));
        let al2 = Layout {
            shape: smallvec::smallvec![m, k],
            strides: al.strides[r - 2..].into(),
            offset: al.offset,
        };
        let bl2 = Layout::contiguous(&[k, count * n]);
        let (prod, _) = gemm_typed(a, &al2, &cols, &bl2);
        // prod is [m, batch, n]; the result is [batch, m, n].
        let out = copy_view(&prod, &Layout::contiguous(&[m, count, n]).permute(&[1, 0, 2]));
        return Some((out, out_shape));
    }
    None
}

/// Widest products `A [m, k] x B [batch, k, n]` whose batch is folded into the columns. Per
/// batch products were faster from 196 columns on (32 products of 256x2304x196: 36.9 against
/// 40.3 ms folded; of 64x576x3136, a 3x3 convolution over 56x56 images: 46.8 against 70.1 ms),
/// and the fold was faster at 49 (512x4608x49: 34.6 against 54.7 ms).
const FOLD_MAX_COLS: usize = 128;

/// The stride of the single axis that `shape`/`strides` (row-major order) flatten into without
/// a copy, or `None` when they do not merge. Extent-1 axes are ignored.
fn merged_stride(shape: &[usize], strides: &[isize]) -> Option<isize> {
    let mut inner: Option<(usize, isize)> = None;
    for (&len, &stride) in shape.iter().zip(strides).rev() {
        if len == 1 {
            continue;
        }
        inner = match inner {
            None => Some((len, stride)),
            Some((count, s)) if stride == s * count as isize => Some((count * len, s)),
            Some(_) => return None,
        };
    }
    Some(inner.map_or(1, |(_, s)| s))
}

/// Batched matmul kernel.
pub(super) fn matmul(a: &RawTensor, b: &RawTensor) -> RawTensor {
    match (host(a), host(b)) {
        (CpuBuffer::F32(x), CpuBuffer::F32(y)) => {
            let (out, shape) =
                folded(x, &a.layout, y, &b.layout).unwrap_or_else(|| gemm_typed(x, &a.layout, y, &b.layout));
            wrap(out, &shape)
        }
        (CpuBuffer::F64(x), CpuBuffer::F64(y)) => {
            let (out, shape) =
                folded(x, &a.layout, y, &b.layout).unwrap_or_else(|| gemm_typed(x, &a.layout, y, &b.layout));
            wrap(out, &shape)
        }
        (CpuBuffer::I64(x), CpuBuffer::I64(y)) => {
            let (out, shape) = matmul_i64(x, &a.layout, y, &b.layout);
            wrap(out, &shape)
        }
        _ => unreachable!("matmul dtypes are checked by the op layer; halves arrive widened to f32"),
    }
}
