//! Joint walks over strided views of one shape: the elementwise kernels whose operands are not
//! all contiguous runs or repeated values (a broadcast row, a transposed operand, a copy of a
//! permuted view). Axes are merged wherever every operand allows and axes of extent 1 dropped;
//! then the output is written in segments along its last axis, each operand read from an
//! offset with its own stride along that axis (0 for a broadcast value, 1 for a run). Where an
//! operand reads across its own rows there (a transpose, whose stride along the output's last
//! axis is a whole row), the last two axes are walked in square tiles instead, so that the
//! lines read stay in cache until all their elements are used (a row-by-row walk read one
//! element per cache line: 4x slower than PyTorch on a transposed copy).

use std::mem::MaybeUninit;

use rayon::prelude::*;
use smallvec::SmallVec;

use super::PARALLEL_MIN;
use crate::layout::Layout;

/// Side of a tile of the tiled walk (elements): 32 x 32 f32 reads touch 64 lines of 64 bytes.
const TILE: usize = 32;

/// Output elements per parallel part of the row walk.
const ROW_CHUNK: usize = 8192;

/// The merged axes of `K` views of one shape.
pub(super) struct Walk<const K: usize> {
    /// Extents of the merged axes, outermost first (at least one).
    extents: SmallVec<[usize; 6]>,
    /// `strides[d][k]`: operand `k`'s stride along merged axis `d`.
    strides: SmallVec<[[isize; K]; 6]>,
    /// Each operand's offset of element 0.
    starts: [isize; K],
}

impl<const K: usize> Walk<K> {
    /// The walk over `layouts`, views of `shape` each.
    pub(super) fn new(shape: &[usize], layouts: [&Layout; K]) -> Self {
        let mut extents: SmallVec<[usize; 6]> = SmallVec::new();
        let mut strides: SmallVec<[[isize; K]; 6]> = SmallVec::new();
        for (d, &n) in shape.iter().enumerate() {
            if n == 1 {
                continue;
            }
            let s: [isize; K] = std::array::from_fn(|k| layouts[k].strides[d]);
            // Axis d continues the previous one for every operand: one axis of their product.
            if let (Some(e), Some(prev)) = (extents.last_mut(), strides.last_mut())
                && (0..K).all(|k| prev[k] == s[k] * n as isize)
            {
                *e *= n;
                *prev = s;
                continue;
            }
            extents.push(n);
            strides.push(s);
        }
        if extents.is_empty() {
            extents.push(shape.iter().product());
            strides.push([0; K]);
        }
        Walk {
            extents,
            strides,
            starts: std::array::from_fn(|k| layouts[k].offset as isize),
        }
    }

    /// Each operand's stride along the output's last axis (the step within a segment).
    pub(super) fn inner_strides(&self) -> [isize; K] {
        *self.strides.last().expect("a walk has an axis")
    }

    fn numel(&self) -> usize {
        self.extents.iter().product()
    }

    /// Whether an operand reads across its rows along the last axis while another axis steps
    /// through it more finely (a transpose): then tiles keep its lines in cache.
    fn tiled(&self) -> bool {
        let d = self.extents.len();
        d >= 2
            && (0..K).any(|k| {
                let inner = self.strides[d - 1][k].unsigned_abs();
                let across = self.strides[d - 2][k].unsigned_abs();
                inner > 1 && across < inner
            })
    }

    /// Each operand's offset of the element at multi-index `idx` over the first `idx.len()`
    /// merged axes (the rest at 0).
    fn offsets(&self, idx: &[usize]) -> [isize; K] {
        let mut off = self.starts;
        for (d, &i) in idx.iter().enumerate() {
            for (o, s) in off.iter_mut().zip(&self.strides[d]) {
                *o += i as isize * s;
            }
        }
        off
    }

    /// The output, row-major over the shape, written by `segment(out, offsets)`: `out` is a
    /// run of output elements along the last axis, and operand `k`'s elements for it are at
    /// `offsets[k] + i * inner_strides()[k]`. Every output element is written once; large
    /// outputs are written by the rayon threads.
    pub(super) fn collect<U: Send>(&self, segment: impl Fn(&mut [MaybeUninit<U>], [isize; K]) + Sync) -> Vec<U> {
        let n = self.numel();
        if n == 0 {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(n);
        let spare = &mut out.spare_capacity_mut()[..n];
        if self.tiled() {
            self.tiles(spare, &segment);
        } else if n >= PARALLEL_MIN {
            spare
                .par_chunks_mut(ROW_CHUNK)
                .enumerate()
                .for_each(|(c, part)| self.rows(c * ROW_CHUNK, part, &segment));
        } else {
            self.rows(0, spare, &segment);
        }
        // SAFETY: the walks write every element of `spare` (the rows cover their part in order,
        // the tiles cover every row block's columns). A panic in `segment` unwinds past this
        // line and drops `out` with length 0.
        unsafe { out.set_len(n) };
        out
    }

    /// Writes output elements `start..start + part.len()` row segment by row segment.
    fn rows<U>(&self, start: usize, part: &mut [MaybeUninit<U>], segment: &impl Fn(&mut [MaybeUninit<U>], [isize; K])) {
        let d = self.extents.len();
        let len = self.extents[d - 1];
        let inner = self.strides[d - 1];
        // The multi-index of the row holding `start`, over the outer axes.
        let mut idx: SmallVec<[usize; 6]> = SmallVec::from_elem(0, d - 1);
        let mut row = start / len;
        for a in (0..d - 1).rev() {
            idx[a] = row % self.extents[a];
            row /= self.extents[a];
        }
        let mut col = start % len;
        let mut pos = 0;
        while pos < part.len() {
            let count = (len - col).min(part.len() - pos);
            let mut off = self.offsets(&idx);
            for (o, s) in off.iter_mut().zip(&inner) {
                *o += col as isize * s;
            }
            segment(&mut part[pos..pos + count], off);
            pos += count;
            col = 0;
            // The next row: the odometer over the outer axes.
            for a in (0..d - 1).rev() {
                idx[a] += 1;
                if idx[a] < self.extents[a] {
                    break;
                }
                idx[a] = 0;
            }
        }
    }

    /// Writes the whole output in tiles of the last two axes: each block of `TILE` rows is one
    /// part (in parallel when the output is large), walked a `TILE`-column strip at a time.
    fn tiles<U: Send>(
        &self,
        out: &mut [MaybeUninit<U>],
        segment: &(impl Fn(&mut [MaybeUninit<U>], [isize; K]) + Sync),
    ) {
        let d = self.extents.len();
        let (rows, cols) = (self.extents[d - 2], self.extents[d - 1]);
        let blocks_per_matrix = rows.div_ceil(TILE);
        let block = |b: usize, part: &mut [MaybeUninit<U>]| {
            // Block b: matrix b / blocks_per_matrix, rows from (b % blocks_per_matrix) * TILE.
            let mut idx: SmallVec<[usize; 6]> = SmallVec::from_elem(0, d);
            let mut m = b / blocks_per_matrix;
            for a in (0..d - 2).rev() {
                idx[a] = m % self.extents[a];
                m /= self.extents[a];
            }
            idx[d - 2] = (b % blocks_per_matrix) * TILE;
            let base = self.offsets(&idx);
            let block_rows = part.len() / cols;
            for c0 in (0..cols).step_by(TILE) {
                let width = TILE.min(cols - c0);
                for r in 0..block_rows {
                    let off: [isize; K] = std::array::from_fn(|k| {
                        base[k] + r as isize * self.strides[d - 2][k] + c0 as isize * self.strides[d - 1][k]
                    });
                    segment(&mut part[r * cols + c0..r * cols + c0 + width], off);
                }
            }
        };
        // Each matrix is `rows * cols` elements of the output; its row blocks are `TILE * cols`
        // (the last one shorter), numbered across matrices.
        if out.len() >= PARALLEL_MIN {
            out.par_chunks_mut(rows * cols).enumerate().for_each(|(i, m)| {
                m.par_chunks_mut(TILE * cols)
                    .enumerate()
                    .for_each(|(r, p)| block(i * blocks_per_matrix + r, p))
            });
        } else {
            for (i, m) in out.chunks_mut(rows * cols).enumerate() {
                for (r, p) in m.chunks_mut(TILE * cols).enumerate() {
                    block(i * blocks_per_matrix + r, p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element `i` (row-major over `layout`'s shape) of the view: its buffer offset.
    fn offset_of(layout: &Layout, mut i: usize) -> usize {
        let mut off = layout.offset as isize;
        for (&n, &s) in layout.shape.iter().zip(&layout.strides).rev() {
            off += (i % n) as isize * s;
            i /= n;
        }
        off as usize
    }

    /// The walk's output of `a - 2 b` against an element-by-element loop.
    fn check(shape: &[usize], a: &Layout, b: &Layout) {
        let buf: Vec<f64> = (0..4096 * 64).map(|v| v as f64).collect();
        let walk = Walk::new(shape, [a, b]);
        let [sa, sb] = walk.inner_strides();
        let got: Vec<f64> = walk.collect(|out, [oa, ob]| {
            for (i, slot) in out.iter_mut().enumerate() {
                let i = i as isize;
                slot.write(buf[(oa + i * sa) as usize] - 2.0 * buf[(ob + i * sb) as usize]);
            }
        });
        let n: usize = shape.iter().product();
        let want: Vec<f64> = (0..n)
            .map(|i| buf[offset_of(a, i)] - 2.0 * buf[offset_of(b, i)])
            .collect();
        assert_eq!(got, want, "shape {shape:?}, layouts {a:?} and {b:?}");
    }

    /// The row-major layout of `shape` at `offset`, its axes then permuted by `perm`.
    fn permuted(shape: &[usize], perm: &[usize], offset: usize) -> Layout {
        let base = Layout::contiguous(shape);
        let mut l = base.permute(perm);
        l.offset = offset;
        l
    }

    #[test]
    fn rows_tiles_broadcasts_and_reversals_match_an_element_loop() {
        // Contiguous (merged to one row), under and over the parallel threshold.
        for n in [1, 7, 33, 40_000] {
            check(&[n], &Layout::contiguous(&[n]), &Layout::new(&[n], &[1], 5));
        }
        // A bias row broadcast over rows, and a column value broadcast along them.
        for (r, c) in [(3, 5), (300, 130), (65, 1000)] {
            let x = Layout::contiguous(&[r, c]);
            check(&[r, c], &x, &Layout::new(&[r, c], &[0, 1], 3));
            check(&[r, c], &x, &Layout::new(&[r, c], &[1, 0], 7));
        }
        // Transposes (tiled), with rows and columns not multiples of the tile, small and large.
        for (r, c) in [(2, 3), (31, 33), (64, 64), (100, 257), (513, 130)] {
            let t = permuted(&[c, r], &[1, 0], 2);
            check(&[r, c], &t, &Layout::contiguous(&[r, c]));
            check(&[r, c], &t, &permuted(&[c, r], &[1, 0], 0));
        }
        // Batched transposes and a head split (4-d permutation), axes of extent 1 between.
        check(
            &[3, 40, 50],
            &permuted(&[3, 50, 40], &[0, 2, 1], 1),
            &Layout::contiguous(&[3, 40, 50]),
        );
        check(
            &[4, 8, 16, 32],
            &permuted(&[4, 16, 8, 32], &[0, 2, 1, 3], 0),
            &Layout::contiguous(&[4, 8, 16, 32]),
        );
        check(
            &[4, 1, 64, 1, 70],
            &permuted(&[4, 1, 70, 1, 64], &[0, 3, 4, 1, 2], 0),
            &Layout::contiguous(&[4, 1, 64, 1, 70]),
        );
        // Reversed axes (negative strides) and a scalar.
        check(
            &[6, 9],
            &Layout::new(&[6, 9], &[-9, -1], 53),
            &Layout::new(&[6, 9], &[9, 1], 0),
        );
        check(
            &[300, 200],
            &Layout::new(&[300, 200], &[1, -300], 300 * 199),
            &Layout::contiguous(&[300, 200]),
        );
        check(&[], &Layout::new(&[], &[], 4), &Layout::new(&[], &[], 9));
        // Empty outputs write nothing.
        check(&[0, 5], &Layout::contiguous(&[0, 5]), &Layout::new(&[0, 5], &[0, 1], 0));
        check(&[5, 0], &permuted(&[0, 5], &[1, 0], 0), &Layout::contiguous(&[5, 0]));
    }
}
