//! The strided-layout argument every strided kernel takes, its index mapping (the same algorithm
//! as the device function `nb_offset`, so it can be tested here), and the layouts the reduction,
//! concatenation and embedding kernels expect.

use crate::error::KernelError;

/// Most axes a [`KernelLayout`] holds (the device struct's array length). Layouts are simplified
/// first (extent-1 axes dropped, mergeable neighbours merged), so a tensor of higher rank still
/// fits when its strides allow.
pub const MAX_DIMS: usize = 8;

/// A strided view of a device buffer, passed to kernels by value as the C struct
///
/// ```c
/// struct NbLayout { int ndim; int pad; long long shape[8]; long long strides[8]; long long offset; };
/// ```
///
/// (144 bytes, 8-byte aligned, no implicit padding). Strides are in elements and may be zero
/// (broadcast) or negative (flips). Element `i` of the view, counted in row-major order, is at
/// buffer index [`KernelLayout::offset_of`]`(i)`. The CUDA backend passes it through a
/// `#[repr(transparent)]` newtype implementing cudarc's `DeviceRepr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelLayout {
    ndim: i32,
    pad: i32,
    shape: [i64; MAX_DIMS],
    strides: [i64; MAX_DIMS],
    offset: i64,
}

impl KernelLayout {
    /// The layout of a view with `shape`, `strides` (in elements) and `offset`, simplified:
    /// extent-1 axes are dropped and neighbouring axes that step through memory as one axis are
    /// merged, which keeps the row-major index mapping and lowers the device's index arithmetic.
    /// A view with no elements becomes the empty 1-axis layout. Fails when the simplified view
    /// still has more than [`MAX_DIMS`] axes, or when `shape` and `strides` differ in length.
    pub fn new(shape: &[usize], strides: &[isize], offset: usize) -> Result<KernelLayout, KernelError> {
        if shape.len() != strides.len() {
            return Err(KernelError::BadLayout(format!(
                "shape {shape:?} has {} axes but strides {strides:?} have {}",
                shape.len(),
                strides.len()
            )));
        }
        let mut dims: Vec<(i64, i64)> = Vec::with_capacity(shape.len());
        if shape.contains(&0) {
            dims.push((0, 0));
        } else {
            for (&n, &s) in shape.iter().zip(strides) {
                if n == 1 {
                    continue;
                }
                let (n, s) = (n as i64, s as i64);
                match dims.last_mut() {
                    // The previous axis steps over exactly one run of this one: merge them.
                    Some((pn, ps)) if *ps == s * n => {
                        *pn *= n;
                        *ps = s;
                    }
                    _ => dims.push((n, s)),
                }
            }
        }
        if dims.len() > MAX_DIMS {
            return Err(KernelError::TooManyDims {
                shape: shape.to_vec(),
                strides: strides.to_vec(),
                simplified: dims.len(),
            });
        }
        let mut layout = KernelLayout {
            ndim: dims.len() as i32,
            pad: 0,
            shape: [1; MAX_DIMS],
            strides: [0; MAX_DIMS],
            offset: offset as i64,
        };
        for (d, (n, s)) in dims.into_iter().enumerate() {
            layout.shape[d] = n;
            layout.strides[d] = s;
        }
        Ok(layout)
    }

    /// The row-major layout of `shape` starting at offset 0.
    pub fn contiguous(shape: &[usize]) -> Result<KernelLayout, KernelError> {
        let strides = contiguous_strides(shape);
        KernelLayout::new(shape, &strides, 0)
    }

    /// Number of (simplified) axes.
    pub fn ndim(&self) -> usize {
        self.ndim as usize
    }

    /// Extents of the simplified axes.
    pub fn shape(&self) -> &[i64] {
        &self.shape[..self.ndim()]
    }

    /// Strides of the simplified axes, in elements.
    pub fn strides(&self) -> &[i64] {
        &self.strides[..self.ndim()]
    }

    /// Buffer index of the first element.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Number of elements of the view.
    pub fn numel(&self) -> i64 {
        self.shape().iter().product()
    }

    /// True when the view is one row-major run of the buffer starting at [`Self::offset`]: the
    /// `_contig` kernel variants apply when every operand is such a run (pass the pointer
    /// advanced by the offset).
    pub fn is_contiguous(&self) -> bool {
        match self.ndim {
            0 => true,
            1 => self.strides[0] == 1 || self.shape[0] <= 1,
            _ => false,
        }
    }

    /// Buffer index of element `i` (row-major, `0 <= i < numel`): the device function
    /// `nb_offset`, step for step. The innermost axis is peeled first; the outermost needs no
    /// division. (The device divides in 32 bits when `i` and the extent fit, which gives the
    /// same quotient.)
    pub fn offset_of(&self, mut i: i64) -> i64 {
        let mut off = self.offset;
        for d in (1..MAX_DIMS).rev() {
            if (d as i32) < self.ndim {
                let n = self.shape[d];
                let q = i / n;
                off += (i - q * n) * self.strides[d];
                i = q;
            }
        }
        if self.ndim > 0 {
            off += i * self.strides[0];
        }
        off
    }

    /// The bytes of the device struct `NbLayout` (little-endian, as the device reads them): for
    /// launchers that pass kernel arguments as raw bytes.
    pub fn as_bytes(&self) -> [u8; std::mem::size_of::<KernelLayout>()] {
        let mut out = [0u8; std::mem::size_of::<KernelLayout>()];
        let words = [self.ndim.to_le_bytes(), self.pad.to_le_bytes()];
        out[..4].copy_from_slice(&words[0]);
        out[4..8].copy_from_slice(&words[1]);
        let longs = self
            .shape
            .iter()
            .chain(&self.strides)
            .chain(std::iter::once(&self.offset));
        for (k, v) in longs.enumerate() {
            out[8 + 8 * k..16 + 8 * k].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// The positions `embed` writes: for an output of `out_shape` (contiguous) receiving `x_shape`
    /// at `starts[a] + steps[a] * i` along every axis `a`, the layout of those positions, in the
    /// order of `x`'s elements. Pass it as the output layout of the `embed` kernel.
    pub fn embed_target(
        out_shape: &[usize],
        x_shape: &[usize],
        starts: &[usize],
        steps: &[usize],
    ) -> Result<KernelLayout, KernelError> {
        let rank = out_shape.len();
        if x_shape.len() != rank || starts.len() != rank || steps.len() != rank {
            return Err(KernelError::BadLayout(format!(
                "embed: output {out_shape:?}, input {x_shape:?}, starts {starts:?} and steps {steps:?} must have one rank"
            )));
        }
        let cs = contiguous_strides(out_shape);
        let strides: Vec<isize> = (0..rank).map(|a| cs[a] * steps[a] as isize).collect();
        let offset: usize = (0..rank).map(|a| starts[a] * cs[a] as usize).sum();
        KernelLayout::new(x_shape, &strides, offset)
    }
}

/// Row-major strides (in elements) of `shape`.
pub fn contiguous_strides(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![0isize; shape.len()];
    let mut step = 1isize;
    for (s, &n) in strides.iter_mut().zip(shape).rev() {
        *s = step;
        step *= n.max(1) as isize;
    }
    strides
}

/// A strided input split for the reduction kernels: `outer` enumerates the kept axes (in the
/// order of the contiguous output, whose reduced axes have extent 1) and `inner` the reduced
/// axes (offset 0), so output element `o` reduces the input elements at
/// `outer.offset_of(o) + inner.offset_of(r)` for `r` in `0..n_red`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReduceLayouts {
    /// The kept axes, with the input's offset.
    pub outer: KernelLayout,
    /// The reduced axes, at offset 0.
    pub inner: KernelLayout,
    /// Number of output elements.
    pub n_out: i64,
    /// Number of input elements reduced into each output element.
    pub n_red: i64,
}

impl ReduceLayouts {
    /// Splits the view `shape`/`strides`/`offset` at the reduced `axes` (distinct, in range).
    pub fn new(
        shape: &[usize],
        strides: &[isize],
        offset: usize,
        axes: &[usize],
    ) -> Result<ReduceLayouts, KernelError> {
        if shape.len() != strides.len() {
            return Err(KernelError::BadLayout(format!(
                "shape {shape:?} and strides {strides:?} differ in rank"
            )));
        }
        if let Some(&a) = axes.iter().find(|&&a| a >= shape.len()) {
            return Err(KernelError::BadLayout(format!(
                "reduced axis {a} is out of range for shape {shape:?}"
            )));
        }
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != axes.len() {
            return Err(KernelError::BadLayout(format!("reduced axes {axes:?} repeat an axis")));
        }
        let kept: Vec<usize> = (0..shape.len()).filter(|a| !sorted.contains(a)).collect();
        let pick = |ax: &[usize]| -> (Vec<usize>, Vec<isize>) {
            (
                ax.iter().map(|&a| shape[a]).collect(),
                ax.iter().map(|&a| strides[a]).collect(),
            )
        };
        let (ks, kt) = pick(&kept);
        let (rs, rt) = pick(&sorted);
        let n_out = ks.iter().product::<usize>() as i64;
        let n_red = rs.iter().product::<usize>() as i64;
        Ok(ReduceLayouts {
            outer: KernelLayout::new(&ks, &kt, offset)?,
            inner: KernelLayout::new(&rs, &rt, 0)?,
            n_out,
            n_red,
        })
    }

    /// True when the reduced elements of one output lie next to each other in memory (the
    /// innermost reduced stride is 1): a group of threads then reads them coalesced. Otherwise
    /// one thread per output reads coalesced across neighbouring outputs, when the kept axes are
    /// the contiguous ones.
    pub fn reduced_unit_stride(&self) -> bool {
        self.inner.strides().last().is_none_or(|&s| s == 1)
    }
}

/// Where one input of a concatenation goes in the contiguous output: element `i` of the input
/// (row-major) is written at `(i / slot_len) * out_row + slot_start + i % slot_len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConcatSlot {
    /// Elements of the input per index of the axes before the concatenation axis.
    pub slot_len: i64,
    /// Elements of the output per index of the axes before the concatenation axis.
    pub out_row: i64,
    /// Where the input's run starts within each output row.
    pub slot_start: i64,
}

impl ConcatSlot {
    /// The slot of an input of `x_shape` placed at index `at` along `axis` of an output whose
    /// extent along `axis` is `total` (other extents equal to the input's).
    pub fn new(x_shape: &[usize], axis: usize, at: usize, total: usize) -> ConcatSlot {
        let post: usize = x_shape[axis + 1..].iter().product();
        ConcatSlot {
            slot_len: (x_shape[axis] * post) as i64,
            out_row: (total * post) as i64,
            slot_start: (at * post) as i64,
        }
    }

    /// Output index of input element `i` (the device formula).
    pub fn out_index(&self, i: i64) -> i64 {
        let row = i / self.slot_len;
        row * self.out_row + self.slot_start + (i - row * self.slot_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer index of every element, by the multi-index (the definition).
    fn by_multi_index(shape: &[usize], strides: &[isize], offset: usize) -> Vec<i64> {
        let n: usize = shape.iter().product();
        (0..n)
            .map(|mut i| {
                let mut off = offset as i64;
                for d in (0..shape.len()).rev() {
                    off += (i % shape[d]) as i64 * strides[d] as i64;
                    i /= shape[d];
                }
                off
            })
            .collect()
    }

    fn check(shape: &[usize], strides: &[isize], offset: usize) -> KernelLayout {
        let l = KernelLayout::new(shape, strides, offset).unwrap();
        let want = by_multi_index(shape, strides, offset);
        assert_eq!(l.numel(), want.len() as i64, "{shape:?} {strides:?}");
        let got: Vec<i64> = (0..l.numel()).map(|i| l.offset_of(i)).collect();
        assert_eq!(got, want, "layout {shape:?} {strides:?} +{offset} -> {l:?}");
        l
    }

    #[test]
    fn device_struct_has_the_c_layout() {
        assert_eq!(std::mem::size_of::<KernelLayout>(), 144);
        assert_eq!(std::mem::align_of::<KernelLayout>(), 8);
        let l = KernelLayout::new(&[3, 4], &[1, 3], 2).unwrap();
        let b = l.as_bytes();
        assert_eq!(&b[..4], &2i32.to_le_bytes());
        assert_eq!(&b[8..16], &3i64.to_le_bytes()); // shape[0] (a transposed view keeps 2 axes)
        assert_eq!(&b[16..24], &4i64.to_le_bytes());
        assert_eq!(&b[24..32], &1i64.to_le_bytes()); // unused axes have extent 1
        assert_eq!(&b[72..80], &1i64.to_le_bytes()); // strides[0]
        assert_eq!(&b[80..88], &3i64.to_le_bytes());
        assert_eq!(&b[136..144], &2i64.to_le_bytes()); // offset
    }

    #[test]
    fn contiguous_views_become_one_run() {
        let l = check(&[2, 3, 4], &[12, 4, 1], 5);
        assert_eq!((l.shape(), l.strides(), l.offset()), (&[24][..], &[1][..], 5));
        assert!(l.is_contiguous());
        let scalar = check(&[], &[], 7);
        assert_eq!(scalar.ndim(), 0);
        assert_eq!(scalar.offset_of(0), 7);
        assert!(scalar.is_contiguous());
    }

    #[test]
    fn transposed_views_map_like_the_multi_index() {
        // [3, 4] row-major, transposed to [4, 3].
        let l = check(&[4, 3], &[1, 4], 0);
        assert!(!l.is_contiguous());
        assert_eq!(l.offset_of(1), 4);
        assert_eq!(l.offset_of(3), 1);
        // A 4-d permutation with an offset, and one with an extent-1 axis in the middle.
        check(&[2, 5, 3, 4], &[1, 24, 8, 2], 3);
        check(&[3, 1, 2, 4], &[1, 99, 24, 6], 0);
    }

    #[test]
    fn broadcast_views_repeat_elements() {
        // A row vector of 4 broadcast over 3 rows, and a column over 5 columns.
        let l = check(&[3, 4], &[0, 1], 2);
        assert_eq!(
            (0..12).map(|i| l.offset_of(i)).collect::<Vec<_>>(),
            [2, 3, 4, 5, 2, 3, 4, 5, 2, 3, 4, 5]
        );
        check(&[3, 5], &[1, 0], 0);
        // A scalar broadcast everywhere, and a broadcast of a transposed view.
        let s = check(&[2, 3, 4], &[0, 0, 0], 9);
        assert!((0..24).all(|i| s.offset_of(i) == 9));
        check(&[2, 3, 4], &[0, 1, 3], 0);
    }

    #[test]
    fn flipped_and_stepped_views() {
        // x[::-1] of 6 elements, x[:, ::2] of a [3, 8] array, a flipped transposed view.
        check(&[6], &[-1], 5);
        check(&[3, 4], &[8, 2], 1);
        check(&[4, 3], &[-1, 4], 3);
    }

    #[test]
    fn high_rank_views_fit_after_simplification() {
        // 10 axes, most of them mergeable.
        let shape = [2, 1, 3, 1, 2, 2, 1, 2, 2, 3];
        let strides = contiguous_strides(&shape);
        let l = check(&shape, &strides, 0);
        assert_eq!(l.ndim(), 1);
        // 9 axes that cannot merge (every stride doubled in turn) are refused.
        let shape = [2usize; 9];
        let strides: Vec<isize> = (0..9).map(|i| 1 << (2 * (8 - i))).collect();
        let err = KernelLayout::new(&shape, &strides, 0).unwrap_err();
        assert!(err.to_string().contains("9 axes"), "{err}");
    }

    #[test]
    fn empty_views() {
        let l = KernelLayout::new(&[3, 0, 2], &[0, 2, 1], 4).unwrap();
        assert_eq!(l.numel(), 0);
    }

    #[test]
    fn reduce_layouts_split_kept_and_reduced_axes() {
        // x: [2, 3, 4] transposed from [4, 3, 2]; reduce axes 0 and 2.
        let (shape, strides, offset) = ([2usize, 3, 4], [1isize, 2, 6], 1usize);
        let r = ReduceLayouts::new(&shape, &strides, offset, &[2, 0]).unwrap();
        assert_eq!((r.n_out, r.n_red), (3, 8));
        let all = by_multi_index(&shape, &strides, offset);
        for o in 0..3 {
            let mut got: Vec<i64> = (0..8).map(|k| r.outer.offset_of(o) + r.inner.offset_of(k)).collect();
            let mut want: Vec<i64> = (0..24).filter(|i| (i / 4) % 3 == o as usize).map(|i| all[i]).collect();
            got.sort_unstable();
            want.sort_unstable();
            assert_eq!(got, want);
        }
        assert!(!r.reduced_unit_stride());
        let last = ReduceLayouts::new(&[5, 7], &[7, 1], 0, &[1]).unwrap();
        assert!(last.reduced_unit_stride());
        assert!(ReduceLayouts::new(&[5, 7], &[7, 1], 0, &[2]).is_err());
        assert!(ReduceLayouts::new(&[5, 7], &[7, 1], 0, &[1, 1]).is_err());
    }

    #[test]
    fn embed_and_concat_positions() {
        // x of [2, 2] written into zeros of [5, 6] at rows 1, 3 and columns 0, 3.
        let t = KernelLayout::embed_target(&[5, 6], &[2, 2], &[1, 0], &[2, 3]).unwrap();
        assert_eq!((0..4).map(|i| t.offset_of(i)).collect::<Vec<_>>(), [6, 9, 18, 21]);
        // [2, 3, 2] concatenated at index 1 of an axis of total extent 5 (axis 1).
        let s = ConcatSlot::new(&[2, 3, 2], 1, 1, 5);
        assert_eq!(s.out_index(0), 2);
        assert_eq!(s.out_index(5), 7);
        assert_eq!(s.out_index(6), 12);
    }
}
