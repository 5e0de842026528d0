//! Shape arithmetic shared by the ops: broadcasting, axis normalisation, element counts.

/// Number of elements of a shape (1 for a scalar).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// The NumPy broadcast of two shapes, or `None` when they are incompatible.
pub fn try_broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i < rank - a.len() { 1 } else { a[i - (rank - a.len())] };
        let db = if i < rank - b.len() { 1 } else { b[i - (rank - b.len())] };
        out[i] = if da == db || db == 1 {
            da
        } else if da == 1 {
            db
        } else {
            return None;
        };
    }
    Some(out)
}

/// The NumPy broadcast of two shapes; panics naming `op` when they are incompatible.
pub fn broadcast_shapes(op: &str, a: &[usize], b: &[usize]) -> Vec<usize> {
    try_broadcast_shapes(a, b).unwrap_or_else(|| {
        panic!(
            "{op}: shapes {a:?} and {b:?} cannot be broadcast together \
             (trailing dimensions must be equal or 1; reshape or expand_dims one operand)"
        )
    })
}

/// Turns a possibly negative axis into an index in `0..rank`; panics naming `op` when out of range.
pub fn normalize_axis(op: &str, axis: isize, rank: usize) -> usize {
    let r = rank as isize;
    if axis < -r || axis >= r {
        panic!(
            "{op}: axis {axis} is out of range for a tensor of rank {rank} (valid: {} to {})",
            -r,
            r - 1
        );
    }
    if axis < 0 { (axis + r) as usize } else { axis as usize }
}

/// Normalises a list of axes (sorted, deduplicated check); `None` means every axis.
pub fn normalize_axes(op: &str, axes: Option<&[isize]>, rank: usize) -> Vec<usize> {
    match axes {
        None => (0..rank).collect(),
        Some(list) => {
            let mut out: Vec<usize> = list.iter().map(|&a| normalize_axis(op, a, rank)).collect();
            out.sort_unstable();
            let before = out.len();
            out.dedup();
            if out.len() != before {
                panic!("{op}: repeated axis in {list:?}");
            }
            out
        }
    }
}

/// Row-major (C order) strides of a shape, in elements.
pub fn contiguous_strides(shape: &[usize]) -> crate::layout::Strides {
    let fill = |strides: &mut [isize]| {
        let mut acc = 1isize;
        for i in (0..shape.len()).rev() {
            strides[i] = acc;
            acc *= shape[i].max(1) as isize;
        }
    };
    if shape.len() <= 6 {
        // Filled in place: the usual ranks never touch the heap or smallvec's growth path.
        let mut buf = [0isize; 6];
        fill(&mut buf[..shape.len()]);
        return crate::layout::Strides::from_buf_and_len(buf, shape.len());
    }
    let mut strides: crate::layout::Strides = smallvec::smallvec![0isize; shape.len()];
    fill(&mut strides);
    strides
}

/// `shape` with the listed axes removed (the result shape of a reduction without keepdims).
pub fn remove_axes(shape: &[usize], axes: &[usize]) -> Vec<usize> {
    shape
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, &s)| s)
        .collect()
}
