//! Fused scaled dot-product attention on the CPU (f32 and f64): the scores of a block of
//! queries are formed, normalised and multiplied by the values while they are in cache, so no
//! `[.., Lq, Lk]` tensor exists, and a causal block stops at its last query's key (the blocks
//! above the diagonal are never computed); a masked block reads only the keys from the first to
//! the last that any of its queries keeps (a padded batch's padding keys are never multiplied). The backward recomputes each block's probabilities
//! from the saved row statistics (FlashAttention's recomputation) and accumulates the key and
//! value gradients of one matrix on one thread, so no two threads write one gradient.
//!
//! Work splits across threads by (matrix, query block) forward and by matrix backward.

use num_traits::Float;
use rayon::prelude::*;

use super::matmul::{GemmScalar, batch_offsets};
use super::rows::{RowFloat, lane_max};
use super::{host, with_wide_loops, wrap};
use crate::storage::{CpuBuffer, RawTensor};

/// Queries per block: the scores of a block (`BLOCK_ROWS x Lk`) stay in the L2 cache for the
/// usual key counts, and a causal product skips all but `BLOCK_ROWS / 2` keys per query of the
/// upper triangle on average.
const BLOCK_ROWS: usize = 64;

/// The backward splits a matrix's queries into groups when there are fewer matrices than
/// this (a shape-only rule, so results do not depend on the thread count).
const SPLIT_TASKS: usize = 8;

/// Independent partial sums of the row loops (so they vectorise).
const LANES: usize = 8;

/// A batched matrix view: the offset of every matrix (row-major over the leading axes) and
/// the strides of its rows and columns.
struct Mats {
    offsets: Vec<isize>,
    rows: usize,
    cols: usize,
    rs: isize,
    cs: isize,
}

impl Mats {
    fn of(x: &RawTensor) -> Mats {
        let l = &x.layout;
        let r = l.rank();
        Mats {
            offsets: batch_offsets(l),
            rows: l.shape[r - 2],
            cols: l.shape[r - 1],
            rs: l.strides[r - 2],
            cs: l.strides[r - 1],
        }
    }

    /// The address of row `row` of matrix `b` in `data`.
    fn row_ptr<T>(&self, data: &[T], b: usize, row: usize) -> *const T {
        data.as_ptr().wrapping_offset(self.offsets[b] + row as isize * self.rs)
    }

    /// Element `(row, col)` of matrix `b`.
    #[inline(always)]
    fn at<T: Copy>(&self, data: &[T], b: usize, row: usize, col: usize) -> T {
        data[(self.offsets[b] + row as isize * self.rs + col as isize * self.cs) as usize]
    }
}

/// Panics naming `op` unless every operand has at least two axes, all have one leading shape,
/// and every view lies inside its buffer (the op layer guarantees this; the unsafe products
/// rely on it).
fn require_operands(op: &str, xs: &[&RawTensor]) {
    let lead = |x: &RawTensor| x.layout.shape[..x.layout.rank().max(2) - 2].to_vec();
    let first = lead(xs[0]);
    for x in xs {
        let len = match host(x) {
            CpuBuffer::F32(b) => b.len(),
            CpuBuffer::F64(b) => b.len(),
            CpuBuffer::Bool(b) => b.len(),
            _ => continue,
        };
        assert!(
            x.layout.rank() >= 2 && lead(x) == first && x.layout.fits(len),
            "internal error: {op} of operands {:?} with leading shapes or layouts that do not match",
            xs.iter().map(|x| x.layout.shape.clone()).collect::<Vec<_>>()
        );
    }
}

/// Panics naming `op` unless `q`, `k` and `v` are `[Lq, D]`, `[Lk, D]` and `[Lk, Dv]`, and the
/// backward's packed output and cotangent, when given, are `[Lq, Dv + 2]` and `[Lq, Dv]`.
fn require_matrices(op: &str, [qm, km, vm]: &[&Mats; 3], backward: Option<(&Mats, &Mats)>) {
    let mut ok = km.cols == qm.cols && vm.rows == km.rows;
    if let Some((pm, gm)) = backward {
        ok &= (pm.rows, pm.cols, gm.rows, gm.cols) == (qm.rows, vm.cols + 2, qm.rows, vm.cols);
    }
    assert!(ok, "internal error: {op} of matrices that do not fit");
}

/// The keys each query keeps, from the causal flag and the mask (bool `[.., Lq, Lk]`).
fn keep<'a>(mask: Option<&'a RawTensor>, qm: &Mats, km: &Mats, causal: bool) -> Keep<'a> {
    let mask = mask.map(|m| {
        let CpuBuffer::Bool(data) = host(m) else {
            panic!("internal error: an attention mask of {}, not bool", m.dtype());
        };
        let mm = Mats::of(m);
        assert!(
            (mm.rows, mm.cols) == (qm.rows, km.rows),
            "internal error: an attention mask {:?} for {} queries and {} keys",
            m.shape(),
            qm.rows,
            km.rows
        );
        (data.as_slice(), mm)
    });
    Keep {
        causal,
        lk: km.rows,
        mask,
    }
}

/// The raw scores `q k^T` of queries `i0..i0 + rows` of matrix `b` against its keys `k0..k0 +
/// width`, into `dst` (`rows x width`, row-major: `width` is `dst.len() / rows`), on this
/// thread.
#[allow(clippy::too_many_arguments)]
fn scores<T: GemmScalar>(
    q: &[T],
    qm: &Mats,
    k: &[T],
    km: &Mats,
    (b, i0, rows): (usize, usize, usize),
    k0: usize,
    dst: &mut [T],
) {
    let width = dst.len().checked_div(rows).unwrap_or(0);
    assert!(
        rows * width == dst.len() && i0 + rows <= qm.rows && k0 + width <= km.rows,
        "internal error: a score block of {} elements at query {i0} and key {k0}",
        dst.len()
    );
    // SAFETY: the views address only elements of their buffers (`RawTensor`'s invariant, and
    // `require_operands` checked them): rows i0..i0 + rows of q's matrix b (D columns), rows
    // k0..k0 + width of k's (read transposed: element (p, j) is k[k0 + j, p]); `dst` holds
    // rows x width.
    unsafe {
        T::product_on_this_thread(
            rows,
            width,
            qm.cols,
            dst.as_mut_ptr(),
            width,
            qm.row_ptr(q, b, i0),
            qm.rs,
            qm.cs,
            km.row_ptr(k, b, k0),
            km.cs,
            km.rs,
        )
    };
}

/// Which keys each query keeps: a prefix (all `lk` keys, or `0..=i` when causal, top-left
/// aligned), and within it those where the mask, when there is one, is true.
struct Keep<'a> {
    causal: bool,
    lk: usize,
    mask: Option<(&'a [bool], Mats)>,
}

impl Keep<'_> {
    /// The prefix of keys query `i` sees.
    #[inline(always)]
    fn seen(&self, i: usize) -> usize {
        if self.causal { (i + 1).min(self.lk) } else { self.lk }
    }

    /// The keys `k0..kend` a block of queries `i0..i0 + rows` of matrix `b` reads: its last
    /// query's prefix, from the first to just past the last key that any query of the block
    /// keeps (a padded batch's padding keys, leading or trailing, are never multiplied), and
    /// one key (masked) for a block whose queries keep none.
    fn block_keys(&self, b: usize, i0: usize, rows: usize) -> (usize, usize) {
        let kend = self.seen(i0 + rows - 1);
        let Some((data, m)) = &self.mask else { return (0, kend) };
        let (mut first, mut end) = (kend, 0);
        // A mask broadcast over the queries (a key padding mask) has one row to look at, over
        // the longest prefix.
        let (distinct, last) = if m.rs == 0 { (1, rows - 1) } else { (rows, 0) };
        let kept = |start: isize, j: usize| data[(start + j as isize * m.cs) as usize];
        for r in 0..distinct {
            let start = m.offsets[b] + (i0 + r) as isize * m.rs;
            let seen = self.seen(i0 + r.max(last));
            let mut j = 0;
            while j < first.min(seen) && !kept(start, j) {
                j += 1;
            }
            if j < seen && kept(start, j) {
                first = first.min(j);
            }
            let mut j = seen;
            while j > end && !kept(start, j - 1) {
                j -= 1;
            }
            end = end.max(j);
            if first == 0 && end == kend {
                break;
            }
        }
        if end == 0 { (0, kend.min(1)) } else { (first, end) }
    }

    /// Sets `row` (keys `k0..k0 + row.len()` of query `i` of matrix `b`) to `value` wherever
    /// the mask drops a key. A mask row that is contiguous (or one value, broadcast) is read as
    /// a slice, so the loop vectorises.
    #[inline(always)]
    fn drop_masked<T: Copy>(&self, b: usize, i: usize, k0: usize, row: &mut [T], value: T) {
        let Some((data, m)) = &self.mask else { return };
        let start = m.offsets[b] + i as isize * m.rs + k0 as isize * m.cs;
        match m.cs {
            1 => {
                let (start, n) = (start as usize, row.len());
                for (x, &kept) in row.iter_mut().zip(&data[start..start + n]) {
                    if !kept {
                        *x = value;
                    }
                }
            }
            0 => {
                if !data[start as usize] {
                    row.fill(value);
                }
            }
            cs => {
                for (j, x) in row.iter_mut().enumerate() {
                    if !data[(start + j as isize * cs) as usize] {
                        *x = value;
                    }
                }
            }
        }
    }
}

/// Replaces `row` (raw scores `s`) by `softmax(scale * s)` and returns the statistics that
/// reproduce it: the row's maximum `m` and `sum(exp(scale * (s - m)))`. The probabilities are
/// `exp(scale * (s - m)) * (1 / sum)`, which the backward forms again to the bit. A row of
/// dropped keys only (every score `-inf`: a query that keeps no key) attends to nothing: its
/// probabilities are 0 and its sum is 0.
#[inline(always)]
fn softmax_scaled<T: RowFloat>(row: &mut [T], scale: T) -> (T, T) {
    let m = lane_max(row);
    if m == T::neg_infinity() {
        row.fill(T::zero());
        return (m, T::zero());
    }
    let mut acc = [T::zero(); LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for (a, x) in acc.iter_mut().zip(c.iter_mut()) {
            *x = ((*x - m) * scale).fast_exp();
            *a = *a + *x;
        }
    }
    for x in chunks.into_remainder() {
        *x = ((*x - m) * scale).fast_exp();
        acc[0] = acc[0] + *x;
    }
    let sum = acc.iter().fold(T::zero(), |a, &b| a + b);
    let inv = T::one() / sum;
    row.iter_mut().for_each(|x| *x = *x * inv);
    (m, sum)
}

/// `softmax(scale * q k^T) v` (causal: query `i` keeps keys `0..=i`) of every matrix of the
/// broadcast views `q` `[.., Lq, D]`, `k` `[.., Lk, D]` and `v` `[.., Lk, Dv]` (one leading
/// shape), packed as `[.., Lq, Dv + 2]`: the output, then each query's softmax statistics
/// (see [`softmax_scaled`]; what the backward needs). `None` for dtypes other than f32 and f64 and for
/// empty extents (the op layer composes those).
pub(super) fn attention(
    q: &RawTensor,
    k: &RawTensor,
    v: &RawTensor,
    mask: Option<&RawTensor>,
    scale: f64,
    causal: bool,
) -> Option<RawTensor> {
    let mut operands = vec![q, k, v];
    operands.extend(mask);
    require_operands("attention", &operands);
    let (qm, km, vm) = (Mats::of(q), Mats::of(k), Mats::of(v));
    require_matrices("attention", &[&qm, &km, &vm], None);
    let keep = keep(mask, &qm, &km, causal);
    if [qm.rows, qm.cols, km.rows, vm.cols].contains(&0) {
        return None;
    }
    let mut shape = q.layout.shape[..q.layout.rank() - 2].to_vec();
    shape.extend([qm.rows, vm.cols + 2]);
    match (host(q), host(k), host(v)) {
        (CpuBuffer::F32(a), CpuBuffer::F32(b), CpuBuffer::F32(c)) => {
            Some(wrap(forward_typed(a, &qm, b, &km, c, &vm, scale as f32, &keep), &shape))
        }
        (CpuBuffer::F64(a), CpuBuffer::F64(b), CpuBuffer::F64(c)) => {
            Some(wrap(forward_typed(a, &qm, b, &km, c, &vm, scale, &keep), &shape))
        }
        _ => None,
    }
}

#[allow(clippy::too_many_arguments)]
fn forward_typed<T: RowFloat + GemmScalar>(
    q: &[T],
    qm: &Mats,
    k: &[T],
    km: &Mats,
    v: &[T],
    vm: &Mats,
    scale: T,
    keep: &Keep,
) -> Vec<T> {
    let (lq, dv) = (qm.rows, vm.cols);
    let width = dv + 2;
    let mut out = vec![T::zero(); qm.offsets.len() * lq * width];
    out.par_chunks_mut(lq * width).enumerate().for_each(|(b, ob)| {
        ob.par_chunks_mut(BLOCK_ROWS * width).enumerate().for_each(|(blk, o)| {
            let i0 = blk * BLOCK_ROWS;
            let rows = o.len() / width;
            let (k0, kend) = keep.block_keys(b, i0, rows);
            let keys = kend - k0;
            let mut s = vec![T::zero(); rows * keys];
            scores(q, qm, k, km, (b, i0, rows), k0, &mut s);
            with_wide_loops(
                #[inline(always)]
                || {
                    for (r, row) in s.chunks_exact_mut(keys).enumerate() {
                        // Keys k0..seen of this query's prefix (none for a query whose prefix
                        // ends before k0: it keeps no key).
                        let seen = keep.seen(i0 + r).min(kend).saturating_sub(k0);
                        keep.drop_masked(b, i0 + r, k0, &mut row[..seen], T::neg_infinity());
                        (o[r * width + dv], o[r * width + dv + 1]) = softmax_scaled(&mut row[..seen], scale);
                        row[seen..].fill(T::zero());
                    }
                },
            );
            // SAFETY: `s` is rows x keys; rows k0..kend of v's matrix b are elements of `v`;
            // `o` holds `rows` rows of `width > dv` elements, of which the product writes the
            // first dv of each.
            unsafe {
                T::product_on_this_thread(
                    rows,
                    dv,
                    keys,
                    o.as_mut_ptr(),
                    width,
                    s.as_ptr(),
                    keys as isize,
                    1,
                    vm.row_ptr(v, b, k0),
                    vm.rs,
                    vm.cs,
                )
            };
        })
    });
    out
}

/// The VJP of [`attention`]: from `q`, `k`, `v`, the packed output `packed` `[.., Lq, Dv + 2]`
/// and the output's cotangent `d_o` `[.., Lq, Dv]` (all one leading shape), the gradients of
/// `q`, `k` and `v` of every matrix, packed as `[.., Lq * D + Lk * D + Lk * Dv]` (each
/// row-major). `None` where [`attention`] gives `None`.
#[allow(clippy::too_many_arguments)]
pub(super) fn attention_backward(
    q: &RawTensor,
    k: &RawTensor,
    v: &RawTensor,
    mask: Option<&RawTensor>,
    packed: &RawTensor,
    d_o: &RawTensor,
    scale: f64,
    causal: bool,
) -> Option<RawTensor> {
    let mut operands = vec![q, k, v, packed, d_o];
    operands.extend(mask);
    require_operands("attention_backward", &operands);
    let ms = [q, k, v, packed, d_o].map(Mats::of);
    let [qm, km, vm, pm, gm] = &ms;
    require_matrices("attention_backward", &[qm, km, vm], Some((pm, gm)));
    let keep = keep(mask, qm, km, causal);
    if [qm.rows, qm.cols, km.rows, vm.cols].contains(&0) {
        return None;
    }
    let mut shape = q.layout.shape[..q.layout.rank() - 2].to_vec();
    shape.push(qm.rows * qm.cols + km.rows * km.cols + vm.rows * vm.cols);
    match [q, k, v, packed, d_o].map(host) {
        [
            CpuBuffer::F32(a),
            CpuBuffer::F32(b),
            CpuBuffer::F32(c),
            CpuBuffer::F32(p),
            CpuBuffer::F32(g),
        ] => Some(wrap(backward_typed([a, b, c, p, g], &ms, scale as f32, keep), &shape)),
        [
            CpuBuffer::F64(a),
            CpuBuffer::F64(b),
            CpuBuffer::F64(c),
            CpuBuffer::F64(p),
            CpuBuffer::F64(g),
        ] => Some(wrap(backward_typed([a, b, c, p, g], &ms, scale, keep), &shape)),
        _ => None,
    }
}

/// `sum(a * b)`, in `LANES` partial sums.
#[inline(always)]
fn lane_dot<T: Float>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for ((s, &u), &w) in acc.iter_mut().zip(x).zip(y) {
            *s = *s + u * w;
        }
    }
    for (&u, &w) in ra.iter().zip(rb) {
        acc[0] = acc[0] + u * w;
    }
    acc.iter().fold(T::zero(), |s, &x| s + x)
}

/// `dst += src`, elementwise.
#[inline(always)]
fn add_into<T: Float>(dst: &mut [T], src: &[T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = *d + s;
    }
}

/// The operands of the backward of one batch of matrices.
struct Backward<'a, T> {
    data: [&'a [T]; 5],
    ms: &'a [Mats; 5],
    scale: T,
    keep: Keep<'a>,
}

fn backward_typed<T: RowFloat + GemmScalar>(data: [&[T]; 5], ms: &[Mats; 5], scale: T, keep: Keep) -> Vec<T> {
    let [qm, km, vm, ..] = ms;
    let (lq, d, lk, dv) = (qm.rows, qm.cols, km.rows, vm.cols);
    let per_matrix = lq * d + lk * d + lk * dv;
    let matrices = qm.offsets.len();
    let mut out = vec![T::zero(); matrices * per_matrix];
    let job = Backward { data, ms, scale, keep };
    // Each matrix's key and value gradients are summed over its query blocks. A task takes a
    // matrix; with fewer than `SPLIT_TASKS` matrices, a matrix's query blocks are split into
    // groups, each summing its own partial gradients, added up after in group order. The
    // split depends on the shapes only, so the sums' order does not depend on the threads.
    let blocks = lq.div_ceil(BLOCK_ROWS);
    let groups = (SPLIT_TASKS / matrices.max(1)).clamp(1, blocks.max(1));
    out.par_chunks_mut(per_matrix).enumerate().for_each(|(b, grads)| {
        let (dq, rest) = grads.split_at_mut(lq * d);
        let (dk, dvv) = rest.split_at_mut(lk * d);
        if groups == 1 {
            job.blocks(b, 0, dq, dk, dvv);
            return;
        }
        let rows_per_group = blocks.div_ceil(groups) * BLOCK_ROWS;
        let partials: Vec<(Vec<T>, Vec<T>)> = dq
            .par_chunks_mut(rows_per_group * d)
            .enumerate()
            .map(|(g, dq_rows)| {
                let (mut dk_part, mut dv_part) = (vec![T::zero(); lk * d], vec![T::zero(); lk * dv]);
                job.blocks(b, g * rows_per_group, dq_rows, &mut dk_part, &mut dv_part);
                (dk_part, dv_part)
            })
            .collect();
        for (dk_part, dv_part) in &partials {
            add_into(dk, dk_part);
            add_into(dvv, dv_part);
        }
    });
    out
}

impl<T: RowFloat + GemmScalar> Backward<'_, T> {
    /// The gradients of matrix `b` from the queries `first..first + dq.len() / D` (whole
    /// blocks from a block boundary): their query gradient written into `dq`, and their share
    /// of the key and value gradients added into `dk` and `dvv` (all keys).
    fn blocks(&self, b: usize, first: usize, dq: &mut [T], dk: &mut [T], dvv: &mut [T]) {
        let [q, k, v, packed, d_o] = self.data;
        let [qm, km, vm, pm, gm] = self.ms;
        let (scale, keep) = (self.scale, &self.keep);
        let (d, lk, dv) = (qm.cols, km.rows, vm.cols);
        let end = first + dq.len() / d;
        let mut p = vec![T::zero(); BLOCK_ROWS.min(end - first) * lk];
        let mut dp = vec![T::zero(); p.len()];
        let mut tmp = vec![T::zero(); lk * d.max(dv)];
        for i0 in (first..end).step_by(BLOCK_ROWS) {
            let rows = BLOCK_ROWS.min(end - i0);
            let (k0, kend) = keep.block_keys(b, i0, rows);
            let keys = kend - k0;
            let (p, dp) = (&mut p[..rows * keys], &mut dp[..rows * keys]);
            // The scores again, as the forward formed them.
            scores(q, qm, k, km, (b, i0, rows), k0, p);
            // P as the forward formed it, zero past the keys a query sees and where the mask
            // drops a key, and all zero for a query that kept no key (its sum is 0).
            with_wide_loops(
                #[inline(always)]
                || {
                    for (r, row) in p.chunks_exact_mut(keys).enumerate() {
                        let i = i0 + r;
                        let seen = keep.seen(i).min(kend).saturating_sub(k0);
                        let (m, sum) = (pm.at(packed, b, i, dv), pm.at(packed, b, i, dv + 1));
                        if sum == T::zero() {
                            row.fill(T::zero());
                            continue;
                        }
                        let inv = T::one() / sum;
                        for x in &mut row[..seen] {
                            *x = ((*x - m) * scale).fast_exp() * inv;
                        }
                        keep.drop_masked(b, i, k0, &mut row[..seen], T::zero());
                        row[seen..].fill(T::zero());
                    }
                },
            );
            // dV[k0..kend] += P^T d_o.
            // SAFETY (this and the products below): every view addresses only elements of
            // its buffer (`RawTensor`'s invariant) and the blocks read are rows i0..i0 + rows
            // of q and d_o, and rows k0..kend of k and v; destinations are scratch buffers or
            // this matrix's own gradient slices, of the sizes written.
            unsafe {
                T::product_on_this_thread(
                    keys,
                    dv,
                    rows,
                    tmp.as_mut_ptr(),
                    dv,
                    p.as_ptr(),
                    1,
                    keys as isize,
                    gm.row_ptr(d_o, b, i0),
                    gm.rs,
                    gm.cs,
                )
            };
            add_into(&mut dvv[k0 * dv..kend * dv], &tmp[..keys * dv]);
            // dP = d_o V[k0..kend]^T.
            unsafe {
                T::product_on_this_thread(
                    rows,
                    keys,
                    dv,
                    dp.as_mut_ptr(),
                    keys,
                    gm.row_ptr(d_o, b, i0),
                    gm.rs,
                    gm.cs,
                    vm.row_ptr(v, b, k0),
                    vm.cs,
                    vm.rs,
                )
            };
            // dS = scale P (dP - sum(P dP)): the scores' gradient (softmax's backward row,
            // its sum from the same P, so a query that sees one key gets exactly 0), with the
            // scale of `scale * q k^T` folded in. FlashAttention forms the sum as
            // `sum(d_o * o)` because it sees a block of keys at a time; a block here holds
            // every key its queries keep. A dropped key (P = 0) gets no gradient, nor does any
            // key of a query that kept none.
            with_wide_loops(
                #[inline(always)]
                || {
                    for (prow, grow) in p.chunks_exact(keys).zip(dp.chunks_exact_mut(keys)) {
                        let dot = lane_dot(prow, grow);
                        for (g, &pv) in grow.iter_mut().zip(prow) {
                            *g = scale * pv * (*g - dot);
                        }
                    }
                },
            );
            // dQ[i0..] = dS K[k0..kend]; dK[k0..kend] += dS^T Q[i0..].
            unsafe {
                T::product_on_this_thread(
                    rows,
                    d,
                    keys,
                    dq.as_mut_ptr().add((i0 - first) * d),
                    d,
                    dp.as_ptr(),
                    keys as isize,
                    1,
                    km.row_ptr(k, b, k0),
                    km.rs,
                    km.cs,
                )
            };
            unsafe {
                T::product_on_this_thread(
                    keys,
                    d,
                    rows,
                    tmp.as_mut_ptr(),
                    d,
                    dp.as_ptr(),
                    1,
                    keys as isize,
                    qm.row_ptr(q, b, i0),
                    qm.rs,
                    qm.cs,
                )
            };
            add_into(&mut dk[k0 * d..kend * d], &tmp[..keys * d]);
        }
    }
}
