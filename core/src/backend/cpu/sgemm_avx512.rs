//! Single-precision GEMM for x86-64 CPUs with AVX-512F: operands packed into contiguous panels,
//! a register-blocked FMA microkernel, cache blocking, and a split of the output over rayon
//! threads that does not change any result.
//!
//! `C (m x n, row-major, contiguous) = A (m x k) * B (k x n)`, where `A` and `B` are a pointer to
//! element `(0, 0)` plus element strides of any sign (zero included). Packing absorbs the strides
//! of `B`: a transposed view costs an in-register 16 x 16 transpose while packing, not a copy.
//! `B` may also gather its rows or its columns through an offset table ([`Rhs`], [`sgemm_rhs`]):
//! the implicit im2col matrix of a stride-1 convolution, whose rows are shifted runs of the
//! image, is packed straight from the image.
//! `A` is read in place when one of its strides is 1 (row-major or transposed: the microkernel
//! broadcasts its elements, so `MR` rows or columns are just `MR` streams), and packed otherwise.
//!
//! Loop structure (Goto/BLIS): columns in blocks of `NC`, the depth in blocks of about `KC`
//! (the packed `B` block stays in L2/L3), rows in blocks of `MC` (the `A` block stays in L2),
//! then `NR`-column panels of `B` (one stays in L1) times `MR`-row panels of `A`, each handled by
//! the microkernel, which keeps an `MR x NR` tile of `C` in `MR * NV` zmm registers (8 x 32: 16
//! accumulators, 2 loads of `B` and 8 broadcasts of `A` per 16 FMAs). Tuned on AMD Zen 5 (48 KiB
//! L1d, 1 MiB L2 per core).
//!
//! Determinism: every element of `C` is `((s_0) + s_1) + ...` where `s_j` is the in-order FMA
//! chain over the `j`-th depth block; the depth blocks depend only on `k`, and threads split only
//! the output into blocks of rows and columns, so the result does not depend on the thread
//! count.

use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// Rows of the register tile.
const MR: usize = 8;
/// Columns of the register tile, in zmm vectors of 16 floats.
const NV: usize = 2;
/// Columns of the register tile.
const NR: usize = 16 * NV;
/// Target depth of one block: a `KC x NR` panel of `B` (32 KiB) plus an `MR x KC` panel of `A`
/// (8 KiB) fit the 48 KiB L1 data cache.
const KC: usize = 256;
/// Rows of one `A` block (`MC x KC` floats = 384 KiB, in the 1 MiB L2).
const MC: usize = 384;
/// Columns of one packed `B` block (`KC x NC` floats = 4 MiB, in L3).
const NC: usize = 4096;
/// Depth steps per iteration of the microkernel's main loop.
const UNROLL: usize = 2;
/// Work (m * n * k) from which the product is split over threads.
const PARALLEL_WORK: usize = 1 << 19;
/// Least work per thread of a split product.
const WORK_PER_PART: usize = 1 << 18;

/// Whether [`sgemm`] is used: the CPU has AVX-512F and FMA, and the environment variable
/// `NABLA_CPU_NO_AVX512` is not set (it selects the portable `gemm` crate path, for testing
/// that path on machines with AVX-512 and for comparing the two).
pub(super) fn available() -> bool {
    static USE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USE.get_or_init(|| {
        std::env::var_os("NABLA_CPU_NO_AVX512").is_none()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("fma")
    })
}

/// A strided matrix operand: the address of element (0, 0) and the element strides.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: isize,
    cs: isize,
}

impl Mat {
    /// The address of element `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must be an element of the matrix the operand describes.
    unsafe fn at(self, i: usize, j: usize) -> *const f32 {
        // SAFETY: the caller guarantees that (i, j) is an element, so the offset stays inside
        // the operand's allocation.
        unsafe { self.ptr.offset(i as isize * self.rs + j as isize * self.cs) }
    }
}

/// How the indices along one axis of a [`Rhs`] operand map to element offsets.
#[derive(Clone, Copy, Debug)]
pub(super) enum Axis {
    /// Index `i` is at offset `i * stride`.
    Stride(isize),
    /// Index `i` is at offset `table[i]`: a gathered axis, such as the rows `(channel, tap)` of
    /// a convolution's implicit im2col matrix, whose elements are shifted runs of the image.
    Table(*const isize),
}

impl Axis {
    /// The offset of index `i`.
    ///
    /// # Safety
    /// A table must have an entry `i`.
    unsafe fn offset(self, i: usize) -> isize {
        match self {
            Axis::Stride(s) => i as isize * s,
            // SAFETY: the caller's contract.
            Axis::Table(t) => unsafe { *t.add(i) },
        }
    }

    /// The axis from index `i0` on, and the offset to add to the base pointer for it (a
    /// strided axis moves the pointer, a table moves itself).
    fn from(self, i0: usize) -> (Axis, isize) {
        match self {
            Axis::Stride(s) => (self, i0 as isize * s),
            Axis::Table(t) => (Axis::Table(t.wrapping_add(i0)), 0),
        }
    }
}

/// The `B` operand (`k x n`): element `(p, j)` is at `ptr + rows.offset(p) + cols.offset(j)`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Rhs {
    /// The base address.
    pub ptr: *const f32,
    /// Offsets along the depth (rows).
    pub rows: Axis,
    /// Offsets along the columns.
    pub cols: Axis,
}

impl Rhs {
    /// The operand from element `(p0, j0)` on.
    fn sub(self, p0: usize, j0: usize) -> Rhs {
        let (rows, dr) = self.rows.from(p0);
        let (cols, dc) = self.cols.from(j0);
        Rhs {
            ptr: self.ptr.wrapping_offset(dr + dc),
            rows,
            cols,
        }
    }

    /// The address of element `(p, j)`.
    ///
    /// # Safety
    /// `(p, j)` must be an element of the operand.
    unsafe fn at(self, p: usize, j: usize) -> *const f32 {
        // SAFETY: the caller guarantees an element, so tables have entries p and j and the
        // offset stays inside the allocation.
        unsafe { self.ptr.offset(self.rows.offset(p) + self.cols.offset(j)) }
    }
}

/// Raw pointers moved into the threads of a split product.
#[derive(Clone, Copy)]
struct Shared {
    a: Mat,
    b: Rhs,
    c: *mut f32,
}

// SAFETY: the operands are only read, and the threads of a split product write disjoint
// row or column ranges of `c`.
unsafe impl Send for Shared {}
// SAFETY: as above.
unsafe impl Sync for Shared {}

/// One cache line of packed floats: keeps the packing buffers 64-byte aligned.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

thread_local! {
    /// Packing buffers of this thread (`A` block, `B` block), reused across calls (at most
    /// `MC x KC` and `KC x NC` floats: 4.4 MiB per thread that ran a large product).
    static BUFFERS: Cell<(Vec<Line>, Vec<Line>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// Writes `C = A * B` for an `m x k` matrix `A` at `a` with strides `(a_rs, a_cs)` and a `k x n`
/// matrix `B` at `b` with strides `(b_rs, b_cs)` into the contiguous row-major `m x n` matrix at
/// `c`, which is overwritten (zeros when `k == 0`). Large products use the rayon threads.
///
/// # Safety
/// The CPU must support AVX-512F and FMA ([`available`]). Every element `(i, p)` of `A` and
/// `(p, j)` of `B` must be readable at the given pointer plus strides, and `c` must be valid for
/// writing `m * n` floats that no other thread accesses meanwhile and that do not overlap `A`
/// or `B`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
) {
    let b = Rhs {
        ptr: b,
        rows: Axis::Stride(b_rs),
        cols: Axis::Stride(b_cs),
    };
    // SAFETY: the caller's contract, with B described by its strides.
    unsafe { sgemm_rhs(m, n, k, a, a_rs, a_cs, b, c) }
}

/// [`sgemm`] on the calling thread only, into `c` with row stride `ldc`: for callers that
/// split their work across threads themselves (the fused attention's blocks).
///
/// # Safety
/// As for [`sgemm`], with `c` valid for an `m x n` block of row stride `ldc >= n`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sgemm_on_this_thread(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: *const f32,
    b_rs: isize,
    b_cs: isize,
    c: *mut f32,
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let sh = Shared {
        a: Mat {
            ptr: a,
            rs: a_rs,
            cs: a_cs,
        },
        b: Rhs {
            ptr: b,
            rows: Axis::Stride(b_rs),
            cols: Axis::Stride(b_cs),
        },
        c,
    };
    // SAFETY: the caller's contract.
    unsafe { sgemm_serial(m, n, k, sh, ldc) }
}

/// [`sgemm`] with a `B` operand whose rows or columns may be gathered through offset tables
/// ([`Rhs`]), as the implicit im2col matrix of a convolution.
///
/// # Safety
/// As for [`sgemm`]: every element `(p, j)` of `b` must be readable (so its tables must have
/// `k` and `n` entries) for the whole call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn sgemm_rhs(
    m: usize,
    n: usize,
    k: usize,
    a: *const f32,
    a_rs: isize,
    a_cs: isize,
    b: Rhs,
    c: *mut f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    let sh = Shared {
        a: Mat {
            ptr: a,
            rs: a_rs,
            cs: a_cs,
        },
        b,
        c,
    };
    let work = m.saturating_mul(n).saturating_mul(k);
    let threads = rayon::current_num_threads();
    let parts = if work >= PARALLEL_WORK && threads > 1 {
        threads.min(work / WORK_PER_PART).max(1)
    } else {
        1
    };
    let split = Split::new(m, n, k, parts);
    let parts = split.parts();
    if parts <= 1 {
        // SAFETY: the caller's contract is forwarded unchanged.
        unsafe { sgemm_serial(m, n, k, sh, n) };
        return;
    }
    // Parts 1.. are offered to the rayon pool; the calling thread runs part 0 and then any part
    // no worker has claimed yet, so it never waits for a job that has not started (no deadlock
    // when the pool is busy or the caller is itself a worker), and it waits for the running ones
    // by spinning rather than sleeping (no wake-up latency at the end).
    let states: Arc<[AtomicU8]> = (0..parts).map(|_| AtomicU8::new(PENDING)).collect();
    for t in 1..parts {
        let states = Arc::clone(&states);
        rayon::spawn(move || {
            if claim(&states[t]) {
                let _done = MarkDone(&states[t]);
                // SAFETY: the caller of `sgemm` does not return before this part is DONE, so
                // the operands and C are still valid; parts write disjoint blocks of C.
                unsafe { split.run(sh, t) };
            }
        });
    }
    // Waits for the parts other threads run before `sgemm` returns, even if this thread's work
    // unwinds (C and the operands must outlive every write and read).
    let _wait = WaitForParts(&states);
    // SAFETY: as above.
    unsafe { split.run(sh, 0) };
    for (t, state) in states.iter().enumerate().skip(1) {
        if claim(state) {
            let _done = MarkDone(state);
            // SAFETY: as above.
            unsafe { split.run(sh, t) };
        }
    }
}

/// Marks a claimed part done when dropped (also when its computation unwinds).
struct MarkDone<'a>(&'a AtomicU8);

impl Drop for MarkDone<'_> {
    fn drop(&mut self) {
        self.0.store(DONE, Ordering::Release);
    }
}

/// Waits, when dropped, until no other thread computes a part: pending parts are marked done (a
/// worker that takes their job later does nothing), running ones are awaited by spinning.
struct WaitForParts<'a>(&'a [AtomicU8]);

impl Drop for WaitForParts<'_> {
    fn drop(&mut self) {
        for state in self.0.iter().skip(1) {
            let _ = state.compare_exchange(PENDING, DONE, Ordering::AcqRel, Ordering::Acquire);
            let mut spins = 0u32;
            while state.load(Ordering::Acquire) != DONE {
                if spins < 1 << 12 {
                    std::hint::spin_loop();
                    spins += 1;
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

/// A part of a split product that no thread has claimed yet.
const PENDING: u8 = 0;
/// A part some thread is computing.
const RUNNING: u8 = 1;
/// A finished part.
const DONE: u8 = 2;

/// Claims a pending part for the calling thread.
fn claim(state: &AtomicU8) -> bool {
    state
        .compare_exchange(PENDING, RUNNING, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

/// How a product is split into a grid of output blocks of whole row and column panels.
#[derive(Clone, Copy)]
struct Split {
    m: usize,
    n: usize,
    k: usize,
    /// Rows per block (a multiple of `MR`).
    row_chunk: usize,
    /// Columns per block (a multiple of `NR`).
    col_chunk: usize,
}

impl Split {
    /// A grid of at most `parts` blocks. Every block reads all of its rows of `A` and packs
    /// all of its columns of `B`, so the grid is chosen to make that traffic per block least
    /// (`rows + cols` smallest): a split of one dimension only would have every thread stream
    /// the whole other operand, which stops scaling beyond a few threads.
    fn new(m: usize, n: usize, k: usize, parts: usize) -> Split {
        let (row_panels, col_panels) = (m.div_ceil(MR), n.div_ceil(NR));
        // (traffic per block, blocks, row parts, column parts) of the best grid so far.
        let mut best = (usize::MAX, 0, 1, 1);
        for pr in 1..=parts.min(row_panels) {
            let pc = (parts / pr).clamp(1, col_panels);
            let traffic = row_panels.div_ceil(pr) * MR + col_panels.div_ceil(pc) * NR;
            let blocks = pr * pc;
            if traffic < best.0 || (traffic == best.0 && blocks > best.1) {
                best = (traffic, blocks, pr, pc);
            }
        }
        let (_, _, pr, pc) = best;
        Split {
            m,
            n,
            k,
            row_chunk: row_panels.div_ceil(pr) * MR,
            col_chunk: col_panels.div_ceil(pc) * NR,
        }
    }

    fn row_parts(&self) -> usize {
        self.m.div_ceil(self.row_chunk)
    }

    /// The number of blocks.
    fn parts(&self) -> usize {
        self.row_parts() * self.n.div_ceil(self.col_chunk)
    }

    /// Computes block `t` (row-block major).
    ///
    /// # Safety
    /// As for [`sgemm`], and no other thread computes the same block at the same time.
    unsafe fn run(self, sh: Shared, t: usize) {
        let (rb, cb) = (t % self.row_parts(), t / self.row_parts());
        let (r0, c0) = (rb * self.row_chunk, cb * self.col_chunk);
        let rows = self.row_chunk.min(self.m - r0);
        let cols = self.col_chunk.min(self.n - c0);
        let part = Shared {
            // Row r0 of A and column c0 of B exist (r0 < m, c0 < n); wrapping_offset keeps
            // k == 0 fine.
            a: Mat {
                ptr: sh.a.ptr.wrapping_offset(r0 as isize * sh.a.rs),
                ..sh.a
            },
            b: sh.b.sub(0, c0),
            c: sh.c.wrapping_add(r0 * self.n + c0),
        };
        // SAFETY: this block reads rows [r0, r0 + rows) of A and columns [c0, c0 + cols) of B,
        // and writes that block of C, which no other block writes (the blocks partition C).
        unsafe { sgemm_serial(rows, cols, self.k, part, self.n) };
    }
}

/// Depth blocks of `k`: as equal as possible, none above `KC` (a thin last block would make the
/// microkernel reload and store its tile for little work).
fn depth_block(k: usize) -> usize {
    let blocks = k.div_ceil(KC).max(1);
    k.div_ceil(blocks)
}

/// The blocked product on the calling thread; `C` has row stride `ldc`.
///
/// # Safety
/// As for [`sgemm`], with `c` valid for an `m x n` block of row stride `ldc`.
unsafe fn sgemm_serial(m: usize, n: usize, k: usize, sh: Shared, ldc: usize) {
    if k == 0 {
        for i in 0..m {
            // SAFETY: row i of the C block has n writable floats.
            unsafe { std::ptr::write_bytes(sh.c.add(i * ldc), 0, n) };
        }
        return;
    }
    // A row-major A is read in place by the microkernel (its MR rows are streams from L2);
    // other strides are packed. A transposed A (unit row stride, as in the weight gradient
    // X^T dY) was read in place too, each depth step on a new cache line: packing it made
    // 512x4096x2048 and 2048x4096x512 products 25-30 % faster (docs/benchmarks.md).
    let direct_a = sh.a.cs == 1;
    let kb = depth_block(k);
    // Row and column blocks are whole panels, so packing never writes past the buffers.
    let mb = (MC / MR * MR).min(m.div_ceil(MR) * MR);
    let nb = (NC / NR * NR).min(n.div_ceil(NR) * NR);
    let (mut abuf, mut bbuf) = BUFFERS.with(|cell| cell.take());
    let a_lines = (mb * kb).div_ceil(16);
    let b_lines = (nb * kb).div_ceil(16);
    if !direct_a && abuf.len() < a_lines {
        abuf = vec![Line([0.0; 16]); a_lines];
    }
    if bbuf.len() < b_lines {
        bbuf = vec![Line([0.0; 16]); b_lines];
    }
    let pa = abuf.as_mut_ptr().cast::<f32>();
    let pb = bbuf.as_mut_ptr().cast::<f32>();
    for jc in (0..n).step_by(nb) {
        let nc = nb.min(n - jc);
        for pc in (0..k).step_by(kb) {
            let kc = kb.min(k - pc);
            for ic in (0..m).step_by(mb) {
                let mc = mb.min(m - ic);
                if !direct_a {
                    // SAFETY: as for B.
                    unsafe { pack_a(sh.a, ic, pc, mc, kc, pa) };
                }
                for jr in (0..nc).step_by(NR) {
                    let cols = NR.min(nc - jr);
                    if ic == 0 {
                        // Panels of B are packed when first used (still in L1 for the kernel)
                        // and reused by the following row blocks.
                        // SAFETY: the panel lies inside B and the buffer holds kc * NR floats
                        // from jr * kc.
                        unsafe { pack_b(sh.b.sub(pc, jc + jr), cols, kc, pb.add(jr * kc)) };
                    }
                    for ir in (0..mc).step_by(MR) {
                        let rows = MR.min(mc - ir);
                        let (ap, a_rs, a_ks, a_rows) = if direct_a {
                            // SAFETY: (ic + ir, pc) is an element of A.
                            (unsafe { sh.a.at(ic + ir, pc) }, sh.a.rs, sh.a.cs, rows)
                        } else {
                            // SAFETY: the packed panel of rows ic + ir.. starts at ir * kc.
                            (unsafe { pa.add(ir * kc) }.cast_const(), 1, MR as isize, MR)
                        };
                        // SAFETY: the panels were packed above with kc * MR and kc * NR floats
                        // (or A is read in place, rows clamped to the matrix), and the tile's
                        // rows and columns lie inside the C block.
                        unsafe {
                            kernel(
                                kc,
                                ap,
                                a_rs,
                                a_ks,
                                a_rows,
                                pb.add(jr * kc),
                                sh.c.add((ic + ir) * ldc + jc + jr),
                                ldc,
                                rows,
                                cols,
                                pc > 0,
                            )
                        };
                    }
                }
            }
        }
    }
    BUFFERS.with(|cell| cell.set((abuf, bbuf)));
}

/// Packs the `mc x kc` block of `A` at `(i0, p0)` into `MR`-row panels: panel `q` holds, for each
/// depth `p`, the `MR` values of rows `q * MR..` (zero past `mc`).
///
/// # Safety
/// The block must lie inside `A`; `dst` must hold `ceil(mc / MR) * MR * kc` floats.
unsafe fn pack_a(a: Mat, i0: usize, p0: usize, mc: usize, kc: usize, dst: *mut f32) {
    for q in 0..mc.div_ceil(MR) {
        let lanes = MR.min(mc - q * MR);
        // SAFETY: row i0 + q * MR and depth p0 are inside A; the panel lies inside dst.
        unsafe { pack_panel::<MR>(a.at(i0 + q * MR, p0), a.rs, a.cs, lanes, kc, dst.add(q * MR * kc)) };
    }
}

/// Packs one panel: `dst[p * R + l] = src[l * ls + p * ks]` for `l < lanes`, zero for
/// `lanes <= l < R`, over depths `p < kc`.
///
/// # Safety
/// Every addressed source element must be readable; `dst` must hold `R * kc` floats.
unsafe fn pack_panel<const R: usize>(src: *const f32, ls: isize, ks: isize, lanes: usize, kc: usize, dst: *mut f32) {
    let lane = |l: usize| src.wrapping_offset(l as isize * ls);
    let depth = |p: usize| src.wrapping_offset(p as isize * ks);
    if ks == 1 && kc > 1 {
        // SAFETY: forwarded; the caller checked AVX-512F before any packing.
        unsafe { pack_transposed::<R>(lane, lanes, kc, dst) };
    } else if ls == 1 {
        // SAFETY: as above.
        unsafe { pack_rows::<R>(depth, lanes, kc, dst) };
    } else {
        // SAFETY: as above.
        unsafe { pack_scalar::<R>(|l, p| lane(l).wrapping_offset(p as isize * ks), lanes, kc, dst) };
    }
}

/// Packs the `kc x lanes` corner of `b` as an `NR`-column panel (see [`pack_panel`]), reading
/// gathered rows as contiguous runs and gathered columns through the in-register transpose.
///
/// # Safety
/// As for [`pack_panel`]: elements `(p, l)` for `p < kc`, `l < lanes` must be readable.
unsafe fn pack_b(b: Rhs, lanes: usize, kc: usize, dst: *mut f32) {
    match (b.rows, b.cols) {
        (Axis::Stride(rs), Axis::Stride(cs)) => {
            // SAFETY: forwarded.
            unsafe { pack_panel::<NR>(b.ptr, cs, rs, lanes, kc, dst) }
        }
        (Axis::Table(_), Axis::Stride(1)) => {
            // SAFETY: forwarded; row p's table entry exists for p < kc.
            unsafe { pack_rows::<NR>(|p| b.at(p, 0), lanes, kc, dst) }
        }
        (Axis::Stride(1), Axis::Table(_)) if kc > 1 => {
            // SAFETY: as above, for the columns.
            unsafe { pack_transposed::<NR>(|l| b.at(0, l), lanes, kc, dst) }
        }
        _ => {
            // SAFETY: as above.
            unsafe { pack_scalar::<NR>(|l, p| b.at(p, l), lanes, kc, dst) }
        }
    }
}

/// [`pack_panel`] element by element: `at(l, p)` is the address of lane `l` at depth `p`.
///
/// # Safety
/// As for [`pack_panel`].
unsafe fn pack_scalar<const R: usize>(at: impl Fn(usize, usize) -> *const f32, lanes: usize, kc: usize, dst: *mut f32) {
    for p in 0..kc {
        for l in 0..R {
            // SAFETY: (l, p) is a source element for l < lanes, and p * R + l < R * kc.
            unsafe { *dst.add(p * R + l) = if l < lanes { *at(l, p) } else { 0.0 } };
        }
    }
}

/// A mask of the low `count` lanes (`count <= 16`).
fn low_mask(count: usize) -> __mmask16 {
    ((1u32 << count) - 1) as __mmask16
}

/// [`pack_panel`] for sources contiguous along the lanes: masked vector copies of the run that
/// starts at `depth(p)` for each depth `p`.
///
/// # Safety
/// As for [`pack_panel`], and the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn pack_rows<const R: usize>(depth: impl Fn(usize) -> *const f32, lanes: usize, kc: usize, dst: *mut f32) {
    for p in 0..kc {
        // SAFETY: row p of the panel; masked-off lanes are neither read nor written.
        unsafe {
            let s = depth(p);
            let d = dst.add(p * R);
            for g in (0..R).step_by(16) {
                let load = low_mask(lanes.saturating_sub(g).min(16));
                let store = low_mask((R - g).min(16));
                let v = _mm512_maskz_loadu_ps(load, s.wrapping_add(g));
                _mm512_mask_storeu_ps(d.wrapping_add(g), store, v);
            }
        }
    }
}

/// [`pack_panel`] for sources contiguous along the depth (e.g. a row-major `A` or a transposed
/// `B`; lane `l` is the run that starts at `lane(l)`): 16 x 16 blocks are loaded lane by lane
/// and transposed in registers.
///
/// # Safety
/// As for [`pack_panel`], and the CPU supports AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn pack_transposed<const R: usize>(lane: impl Fn(usize) -> *const f32, lanes: usize, kc: usize, dst: *mut f32) {
    for g in (0..R).step_by(16) {
        let valid = lanes.saturating_sub(g).min(16);
        let store = low_mask((R - g).min(16));
        for p0 in (0..kc).step_by(16) {
            let depth = (kc - p0).min(16);
            let load = low_mask(depth);
            let mut r = [_mm512_setzero_ps(); 16];
            for (l, row) in r.iter_mut().enumerate().take(valid) {
                // SAFETY: lane g + l < lanes and depths p0..p0 + depth are source elements;
                // masked-off depths are not read.
                *row = unsafe { _mm512_maskz_loadu_ps(load, lane(g + l).add(p0)) };
            }
            let t = transpose16(r);
            for (q, col) in t.iter().enumerate().take(depth) {
                // SAFETY: (p0 + q) * R + g + 16 <= R * kc for the stored lanes.
                unsafe { _mm512_mask_storeu_ps(dst.add((p0 + q) * R + g), store, *col) };
            }
        }
    }
}

/// Transposes a 16 x 16 block held as 16 row vectors.
#[target_feature(enable = "avx512f")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // Pairs of rows interleaved per 128-bit lane: t[2i], t[2i + 1] hold columns (0, 1) and
    // (2, 3) of each lane for rows 2i, 2i + 1.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + j], 128-bit lane L: column 4L + j of rows 4i..4i + 4.
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        let (t0, t1) = (_mm512_castps_pd(t[4 * i]), _mm512_castps_pd(t[4 * i + 1]));
        let (t2, t3) = (_mm512_castps_pd(t[4 * i + 2]), _mm512_castps_pd(t[4 * i + 3]));
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3));
    }
    // Gather the four row groups of each column: lanes (0, 2) and (1, 3), then once more.
    let mut out = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
        let w0 = _mm512_shuffle_f32x4::<0xdd>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
        let w1 = _mm512_shuffle_f32x4::<0xdd>(u[8 + j], u[12 + j]);
        out[j] = _mm512_shuffle_f32x4::<0x88>(v0, v1);
        out[8 + j] = _mm512_shuffle_f32x4::<0xdd>(v0, v1);
        out[4 + j] = _mm512_shuffle_f32x4::<0x88>(w0, w1);
        out[12 + j] = _mm512_shuffle_f32x4::<0xdd>(w0, w1);
    }
    out
}

/// The microkernel: the `MR x NR` product of an `A` panel and a `B` panel over depth `kc`, stored
/// (or added when `accumulate`) into the `rows x cols` corner of the tile at `c`.
///
/// The `A` panel is read in place: row `i` at depth `p` is `a[i * a_rs + p * a_ks]` (a packed
/// panel has strides `(1, MR)`); rows from `a_rows` on repeat row `a_rows - 1`, so an edge panel
/// of an unpacked matrix is never read past its last row (those rows are not stored).
///
/// # Safety
/// The CPU supports AVX-512F and FMA; `a` addresses `a_rows x kc` readable floats as above;
/// `pb` holds `kc * NR` floats and is 64-byte aligned; `c` is valid for `rows x cols` floats
/// with row stride `ldc`; `1 <= rows <= a_rows` and `rows <= MR`.
#[target_feature(enable = "avx512f,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    kc: usize,
    a: *const f32,
    a_rs: isize,
    a_ks: isize,
    a_rows: usize,
    pb: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    let mut arow = [a; MR];
    for (i, r) in arow.iter_mut().enumerate() {
        *r = a.wrapping_offset(i.min(a_rows - 1) as isize * a_rs);
    }
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    // The C tile is needed only after the loop: fetch it meanwhile.
    for i in 0..rows {
        for v in 0..NV {
            _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ldc + 16 * v).cast_const().cast());
        }
    }
    // One depth step: NV loads of B, MR broadcasts of A, MR * NV independent FMAs.
    macro_rules! step {
        ($p:expr_2021) => {{
            let p: usize = $p;
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, x) in bv.iter_mut().enumerate() {
                // SAFETY: p * NR + 16 * v + 16 <= kc * NR, and the panel start and NR * 4 bytes
                // are multiples of 64.
                *x = unsafe { _mm512_load_ps(pb.add(p * NR + 16 * v)) };
            }
            for (i, row) in acc.iter_mut().enumerate() {
                // SAFETY: row min(i, a_rows - 1) at depth p is a readable element of the panel.
                let av = _mm512_set1_ps(unsafe { *arow[i].offset(p as isize * a_ks) });
                for v in 0..NV {
                    row[v] = _mm512_fmadd_ps(av, bv[v], row[v]);
                }
            }
        }};
    }
    let mut p = 0;
    while p + UNROLL <= kc {
        for u in 0..UNROLL {
            step!(p + u);
        }
        p += UNROLL;
    }
    while p < kc {
        step!(p);
        p += 1;
    }
    if rows == MR && cols == NR {
        for (i, row) in acc.iter().enumerate() {
            for (v, x) in row.iter().enumerate() {
                // SAFETY: the full tile lies inside C.
                unsafe {
                    let dst = c.add(i * ldc + 16 * v);
                    let y = if accumulate {
                        _mm512_add_ps(_mm512_loadu_ps(dst), *x)
                    } else {
                        *x
                    };
                    _mm512_storeu_ps(dst, y);
                }
            }
        }
    } else {
        // Edge tile: spill the accumulators (static indices keep them in registers above), then
        // write the valid corner with masks.
        let tile = acc;
        for (i, row) in tile.iter().take(rows).enumerate() {
            for (v, x) in row.iter().enumerate() {
                let mask = low_mask(cols.saturating_sub(16 * v).min(16));
                // SAFETY: masked lanes are columns < cols of a row < rows.
                unsafe {
                    let dst = c.wrapping_add(i * ldc + 16 * v);
                    let y = if accumulate {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, dst), *x)
                    } else {
                        *x
                    };
                    _mm512_mask_storeu_ps(dst, mask, y);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// True (after saying so on stderr) when this CPU lacks the kernel's instructions.
    fn skipped_without_avx512() -> bool {
        if available() {
            return false;
        }
        eprintln!(
            "SKIPPED: the AVX-512 sgemm kernel is not used here (no AVX-512F/FMA, or NABLA_CPU_NO_AVX512 is set)"
        );
        true
    }

    use super::*;

    /// A deterministic pseudo-random value in [-1, 1).
    fn value(seed: u64) -> f32 {
        let x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29) ^ 0xD6E8_FEB8_6659_FD93;
        let x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// An operand stored in its own buffer with the given strides (any sign) and a base offset.
    struct Operand {
        data: Vec<f32>,
        base: usize,
        rs: isize,
        cs: isize,
    }

    impl Operand {
        /// `rows x cols` with strides `(rs, cs)`; the buffer is sized for the extreme offsets.
        fn new(rows: usize, cols: usize, rs: isize, cs: isize, seed: u64) -> Operand {
            let span = |n: usize, s: isize| if n == 0 { 0 } else { (n as isize - 1) * s };
            let (ra, ca) = (span(rows, rs), span(cols, cs));
            let low = ra.min(0) + ca.min(0);
            let high = ra.max(0) + ca.max(0);
            let len = (high - low + 1) as usize;
            let data = (0..len).map(|i| value(seed * 1_000_003 + i as u64)).collect();
            Operand {
                data,
                base: (-low) as usize,
                rs,
                cs,
            }
        }

        fn get(&self, i: usize, j: usize) -> f32 {
            self.data[(self.base as isize + i as isize * self.rs + j as isize * self.cs) as usize]
        }

        fn ptr(&self) -> *const f32 {
            self.data[self.base..].as_ptr()
        }
    }

    /// Checks one product against an f64-accumulated reference.
    fn check(m: usize, n: usize, k: usize, a: &Operand, b: &Operand) {
        let mut c = vec![f32::NAN; m * n];
        // SAFETY: the operands address their own buffers; c holds m * n floats.
        unsafe {
            sgemm(m, n, k, a.ptr(), a.rs, a.cs, b.ptr(), b.rs, b.cs, c.as_mut_ptr());
        }
        for i in 0..m {
            for j in 0..n {
                let (mut exact, mut mag) = (0.0f64, 0.0f64);
                for p in 0..k {
                    let x = a.get(i, p) as f64 * b.get(p, j) as f64;
                    exact += x;
                    mag += x.abs();
                }
                let got = c[i * n + j] as f64;
                let err = (got - exact).abs() / mag.max(1e-30);
                assert!(
                    err <= 1e-5 || (k == 0 && got == 0.0),
                    "{m}x{k}x{n} at ({i}, {j}): got {got}, expected {exact} (relative error {err:e})"
                );
            }
        }
    }

    /// Row-major operands of the given shape.
    fn check_shape(m: usize, n: usize, k: usize) {
        let a = Operand::new(m, k, k as isize, 1, 1);
        let b = Operand::new(k, n, n as isize, 1, 2);
        check(m, n, k, &a, &b);
    }

    #[test]
    fn shapes_match_reference() {
        if skipped_without_avx512() {
            return;
        }
        for &(m, n, k) in &[
            (1, 1, 1),
            (17, 33, 5),
            (1, 1, 300),
            (1, 100, 37),
            (100, 1, 37),
            (8, 32, 16),
            (9, 31, 17),
            (15, 47, 513),
            (65, 130, 260),
            (3, 70, 1),
            (128, 512, 784),
            (200, 10, 512),
            (3, 4100, 5),
        ] {
            check_shape(m, n, k);
        }
    }

    #[test]
    fn zero_depth_writes_zeros() {
        if skipped_without_avx512() {
            return;
        }
        check_shape(5, 7, 0);
        check_shape(40, 70, 0);
        // Empty outputs are a no-op.
        check_shape(0, 7, 3);
        check_shape(5, 0, 3);
    }

    #[test]
    fn strided_and_transposed_views() {
        if skipped_without_avx512() {
            return;
        }
        let (m, n, k) = (37, 45, 29);
        // (a_rs, a_cs), (b_rs, b_cs): row-major, transposed, padded, reversed and broadcast views.
        let a_views = [
            (k as isize, 1),
            (1, m as isize),
            (2 * k as isize + 3, 2),
            (-(k as isize), -1),
            (0, 1),
            (3, 5 * m as isize),
        ];
        let b_views = [
            (n as isize, 1),
            (1, k as isize),
            (-(n as isize) - 1, 1),
            (1, 0),
            (2, -(2 * k as isize) - 7),
        ];
        for (ai, &(ars, acs)) in a_views.iter().enumerate() {
            for (bi, &(brs, bcs)) in b_views.iter().enumerate() {
                let a = Operand::new(m, k, ars, acs, 10 + ai as u64);
                let b = Operand::new(k, n, brs, bcs, 20 + bi as u64);
                check(m, n, k, &a, &b);
            }
        }
    }

    #[test]
    fn packed_a_over_several_blocks() {
        if skipped_without_avx512() {
            return;
        }
        // Neither stride of A is 1, so A is packed; m spans two row blocks, k three depth blocks.
        let (m, n, k) = (2 * MC + 13, 70, 2 * KC + 9);
        let a = Operand::new(m, k, 2 * k as isize, 2, 9);
        let b = Operand::new(k, n, n as isize, 1, 10);
        check(m, n, k, &a, &b);
    }

    #[test]
    fn mlp_shapes_with_views() {
        if skipped_without_avx512() {
            return;
        }
        // (784x128) @ (128x512), lhs a transposed view of a 128x784 matrix.
        let a = Operand::new(784, 128, 1, 784, 3);
        let b = Operand::new(128, 512, 512, 1, 4);
        check(784, 512, 128, &a, &b);
        // (128x512) @ (512x512)^T, rhs a transposed view.
        let a = Operand::new(128, 512, 512, 1, 5);
        let b = Operand::new(512, 512, 1, 512, 6);
        check(128, 512, 512, &a, &b);
    }

    #[test]
    fn result_does_not_depend_on_threads() {
        if skipped_without_avx512() {
            return;
        }
        let (m, n, k) = (300, 260, 700);
        let a = Operand::new(m, k, k as isize, 1, 7);
        let b = Operand::new(k, n, 1, k as isize, 8);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("pool");
            let mut c = vec![0.0f32; m * n];
            pool.install(|| {
                // SAFETY: as in `check`.
                unsafe { sgemm(m, n, k, a.ptr(), a.rs, a.cs, b.ptr(), b.rs, b.cs, c.as_mut_ptr()) }
            });
            c
        };
        let one = run(1);
        for threads in [2, 3, 5, 16] {
            let many = run(threads);
            assert!(one.iter().zip(&many).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        check(m, n, k, &a, &b);
    }

    #[test]
    fn transpose16_transposes() {
        if skipped_without_avx512() {
            return;
        }
        // SAFETY: AVX-512F is available; the arrays hold 256 floats.
        unsafe {
            let src: Vec<f32> = (0..256).map(|x| x as f32).collect();
            let mut r = [_mm512_setzero_ps(); 16];
            for (i, x) in r.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(src.as_ptr().add(16 * i));
            }
            let t = transpose16(r);
            let mut out = [0.0f32; 256];
            for (i, x) in t.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * i), *x);
            }
            for i in 0..16 {
                for j in 0..16 {
                    assert_eq!(out[16 * i + j], src[16 * j + i]);
                }
            }
        }
    }
}
