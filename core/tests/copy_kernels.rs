//! The CPU's copying kernels against plain index loops, below and above the size where they
//! run on several threads: concatenation of strided views (transposed, reversed, stepped)
//! along every axis, and the strided embed that is the backward pass of slicing.

use nabla_core as nb;
use nb::Tensor;

/// A tensor's values in row-major order.
fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>()
}

/// The reference concatenation of row-major value lists along `axis` of rank-3 shapes.
fn reference(parts: &[(Vec<f64>, [usize; 3])], axis: usize) -> Vec<f64> {
    let mut shape = parts[0].1;
    shape[axis] = parts.iter().map(|p| p.1[axis]).sum();
    let mut out = vec![f64::NAN; shape.iter().product()];
    let mut at = 0;
    for (v, s) in parts {
        for i in 0..s[0] {
            for j in 0..s[1] {
                for k in 0..s[2] {
                    let mut o = [i, j, k];
                    o[axis] += at;
                    out[(o[0] * shape[1] + o[1]) * shape[2] + o[2]] = v[(i * s[1] + j) * s[2] + k];
                }
            }
        }
        at += s[axis];
    }
    out
}

#[test]
fn strided_views_concatenate_along_every_axis_at_every_size() {
    for scale in [1usize, 40] {
        let (a, b, c) = (3 * scale, 4, 5 * scale);
        let base = |seed: f64, n: usize| -> Vec<f64> { (0..n).map(|i| seed + i as f64 * 0.5).collect() };
        // Three views with the same shape [a, b, c]: plain, transposed back from [c, b, a],
        // reversed along the last axis, and every other row of a taller tensor.
        let plain = Tensor::from_vec(base(0.0, a * b * c), &[a, b, c]);
        let transposed = Tensor::from_vec(base(1e6, a * b * c), &[c, b, a]).permute(&[2, 1, 0]);
        let reversed = Tensor::from_vec(base(2e6, a * b * c), &[a, b, c]).flip(2);
        let stepped = Tensor::from_vec(base(3e6, 2 * a * b * c), &[2 * a, b, c]).slice_axis(0, None, None, 2);
        let views = [plain, transposed, reversed, stepped];
        for axis in 0..3 {
            let got = nb::concatenate(&views, axis as isize);
            let parts: Vec<(Vec<f64>, [usize; 3])> = views.iter().map(|v| (values(v), [a, b, c])).collect();
            let want = reference(&parts, axis);
            assert_eq!(got.shape()[axis], 4 * [a, b, c][axis]);
            assert_eq!(values(&got), want, "axis {axis}, scale {scale}");
        }
    }
}

#[test]
fn empty_parts_and_single_rows_concatenate() {
    let empty = Tensor::from_vec(Vec::<f32>::new(), &[0, 3]);
    let row = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], &[1, 3]);
    let got = nb::concatenate(&[empty.clone(), row.clone(), empty], 0);
    assert_eq!(got.shape(), &[1, 3]);
    assert_eq!(got.to_vec::<f32>(), vec![1.0, 2.0, 3.0]);
    let hollow = Tensor::from_vec(Vec::<f32>::new(), &[2, 0]);
    let none = nb::concatenate(&[hollow.clone(), hollow], 1);
    assert_eq!(none.shape(), &[2, 0]);
    let ints = nb::stack(
        &[
            Tensor::from_vec(vec![1i64, 2], &[2]),
            Tensor::from_vec(vec![3i64, 4], &[2]),
        ],
        1,
    );
    assert_eq!(ints.to_vec::<i64>(), vec![1, 3, 2, 4]);
}

#[test]
fn the_gradient_of_stepped_slices_embeds_at_every_size() {
    for (d0, d1, d2) in [(7usize, 3usize, 5usize), (64, 40, 30)] {
        let x = Tensor::from_vec(vec![0.0f64; d0 * d1 * d2], &[d0, d1, d2]);
        // Rows 3, 7, 11, ... of axis 0 and columns 1, 4, 7, ... of axis 2.
        let rows: Vec<usize> = (3..d0).step_by(4).collect();
        let cols: Vec<usize> = (1..d2).step_by(3).collect();
        let weights: Vec<f64> = (0..rows.len() * d1 * cols.len()).map(|i| 1.0 + i as f64).collect();
        let w = Tensor::from_vec(weights.clone(), &[rows.len(), d1, cols.len()]);
        let g =
            nb::grad(|x: &Tensor| (x.slice_axis(0, Some(3), None, 4).slice_axis(2, Some(1), None, 3) * &w).sum_all())(
                &x,
            );
        let mut want = vec![0.0; d0 * d1 * d2];
        for (a, &r) in rows.iter().enumerate() {
            for j in 0..d1 {
                for (b, &c) in cols.iter().enumerate() {
                    want[(r * d1 + j) * d2 + c] = weights[(a * d1 + j) * cols.len() + b];
                }
            }
        }
        assert_eq!(g.to_vec::<f64>(), want, "[{d0}, {d1}, {d2}]");
    }
}

#[test]
fn padding_transposed_and_reversed_views_places_every_element() {
    // Small (one pass) and large enough to split the output rows across threads.
    for (rows, cols) in [(5usize, 4usize), (300, 260)] {
        let base = Tensor::from_vec((0..rows * cols).map(|i| i as f64 + 1.0).collect(), &[rows, cols]);
        let views = [
            ("transposed", base.swap_axes(0, 1)),
            ("reversed", base.slice_axis(1, None, None, -1)),
            ("stepped", base.slice_axis(0, None, None, 2)),
        ];
        for (what, view) in views {
            let (r, c) = (view.shape()[0], view.shape()[1]);
            let values = view.to_vec::<f64>();
            let got = view.pad(&[(1, 2), (3, 0)]).to_vec::<f64>();
            let mut want = vec![0.0; (r + 3) * (c + 3)];
            for i in 0..r {
                for j in 0..c {
                    want[(i + 1) * (c + 3) + j + 3] = values[i * c + j];
                }
            }
            assert_eq!(got, want, "{what} [{rows}, {cols}]");
        }
    }
    // A scalar "padded" by nothing is itself.
    assert_eq!(Tensor::from_vec(vec![2.5f64], &[]).pad(&[]).to_vec::<f64>(), vec![2.5]);
}
