//! Tensor basics: construction, dtypes, casting, printing, views that share storage, seeded
//! randomness, integer and bool ops, `where` over every kind of operand, and error messages
//! that name the op and shapes.

mod common;

use common::panic_message;
use nabla_core as nb;
use nb::{DType, Rng, Sl, Tensor};

#[test]
fn literals_and_constructors() {
    let s = nb::tensor(3.0);
    assert_eq!((s.shape(), s.dtype()), (&[][..], DType::F32));
    let m = nb::tensor([[1, 2, 3], [4, 5, 6]]);
    assert_eq!((m.shape(), m.dtype()), (&[2, 3][..], DType::I64));
    assert_eq!(nb::tensor_of([1.5, 2.5], DType::F64).dtype(), DType::F64);
    assert_eq!(nb::tensor([true, false]).dtype(), DType::Bool);
    assert_eq!(Tensor::arange(0.0, 5.0, 2.0, DType::I64).to_vec::<i64>(), vec![0, 2, 4]);
    assert_eq!(
        Tensor::linspace(0.0, 1.0, 5, DType::F64).to_vec::<f64>(),
        vec![0.0, 0.25, 0.5, 0.75, 1.0]
    );
    assert_eq!(Tensor::eye(2, DType::F32).to_vec::<f32>(), vec![1.0, 0.0, 0.0, 1.0]);
    assert_eq!(Tensor::full(&[2], 7.0, DType::I64).to_vec::<i64>(), vec![7, 7]);
    assert!(Tensor::try_from_vec(vec![1.0f32; 5], &[2, 3]).is_err());
    assert_eq!(nb::tensor(2.5).item::<f32>(), 2.5);
}

#[test]
fn casting_between_dtypes() {
    let x = nb::tensor([-1.7, 0.0, 2.9]);
    assert_eq!(x.cast(DType::I64).to_vec::<i64>(), vec![-1, 0, 2]);
    assert_eq!(x.cast(DType::Bool).to_vec::<bool>(), vec![true, false, true]);
    assert_eq!(
        nb::tensor([true, false]).cast(DType::F64).to_vec::<f64>(),
        vec![1.0, 0.0]
    );
}

#[test]
fn display_prints_like_numpy() {
    assert_eq!(
        nb::tensor([[1.0, 2.0], [3.0, 4.5]]).to_string(),
        "[[1.  2. ]\n [3.  4.5]]"
    );
    assert_eq!(nb::tensor([1, 20, 300]).to_string(), "[  1  20 300]");
    assert_eq!(nb::tensor(2.0).to_string(), "2.");
    let big = Tensor::arange(0.0, 2000.0, 1.0, DType::I64);
    assert_eq!(big.to_string(), "[   0    1    2 ... 1997 1998 1999]");
}

#[test]
fn views_share_storage_without_copying() {
    let x = Tensor::arange(0.0, 24.0, 1.0, DType::F32).reshape([2, 3, 4]);
    for v in [
        x.transpose(),
        x.reshape([6, 4]),
        x.expand_dims(0),
        x.slice(&[Sl::all(), Sl::new(None, None, 2)]),
        x.flip(-1),
        x.i(1),
        x.broadcast_to(&[5, 2, 3, 4]),
        x.split(2, 0)[1].clone(),
    ] {
        assert!(v.shares_storage_with(&x), "a view copied: shape {:?}", v.shape());
    }
    assert_eq!(
        x.slice(&[Sl::range(1, 2), Sl::new(None, None, -2)]).to_vec::<f32>(),
        vec![20., 21., 22., 23., 12., 13., 14., 15.]
    );
    // A reshape of a non-contiguous view must copy, as NumPy does.
    assert!(!x.transpose().reshape([24]).shares_storage_with(&x));
}

#[test]
fn seeded_random_is_reproducible() {
    let a = Rng::new(42).normal(&[1000], 0.0, 1.0, DType::F64).to_vec::<f64>();
    let b = Rng::new(42).normal(&[1000], 0.0, 1.0, DType::F64).to_vec::<f64>();
    assert_eq!(a, b);
    let mean = a.iter().sum::<f64>() / 1000.0;
    let var = a.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 1000.0;
    assert!(mean.abs() < 0.1 && (var - 1.0).abs() < 0.15, "mean {mean} var {var}");
    // Fixed first values guard against silent changes of the generator across versions.
    let u = Rng::new(0).uniform(&[2], 0.0, 1.0, DType::F64).to_vec::<f64>();
    assert!(u.iter().all(|v| (0.0..1.0).contains(v)));
    let mut r = Rng::new(3);
    assert_ne!(
        r.uniform(&[4], 0.0, 1.0, DType::F64).to_vec::<f64>(),
        r.uniform(&[4], 0.0, 1.0, DType::F64).to_vec::<f64>()
    );
    let mut p = Rng::new(5).permutation(10).to_vec::<i64>();
    p.sort();
    assert_eq!(p, (0..10).collect::<Vec<i64>>());
}

#[test]
fn integer_and_bool_ops() {
    let a = nb::tensor([7, -7, 4]);
    let b = nb::tensor([2, 2, -3]);
    assert_eq!((&a + &b).to_vec::<i64>(), vec![9, -5, 1]);
    assert_eq!((&a * &b).to_vec::<i64>(), vec![14, -14, -12]);
    assert_eq!((&a / &b).to_vec::<i64>(), vec![3, -4, -2]);
    assert_eq!(a.sum_all().item::<i64>(), 4);
    assert_eq!(a.max(0, false).item::<i64>(), 7);
    assert_eq!(
        a.gt(&b).logical_and(&a.lt_scalar(5.0)).to_vec::<bool>(),
        vec![false, false, true]
    );
    assert_eq!(nb::tensor([true, true, false]).sum_all().item::<i64>(), 2);
    // Mixed dtypes promote, as NumPy does.
    assert_eq!((&a + &nb::tensor([0.5, 0.5, 0.5])).dtype(), DType::F32);
    assert_eq!(
        nb::tensor([[1, 2], [3, 4]]).matmul(&nb::tensor([1, 1])).to_vec::<i64>(),
        vec![3, 7]
    );
}

#[test]
fn large_tensors_use_the_parallel_paths_correctly() {
    let n = 1 << 17;
    let x = Tensor::arange(0.0, n as f64, 1.0, DType::F64);
    assert_eq!(x.sum_all().item::<f64>(), (n as f64 - 1.0) * n as f64 / 2.0);
    let y = (&x * 2.0).reshape([256, 512]).transpose() + 1.0;
    assert_eq!(y.sum_all().item::<f64>(), (n as f64 - 1.0) * n as f64 + n as f64);
    assert_eq!(x.reshape([512, 256]).max(1, false).to_vec::<f64>()[511], n as f64 - 1.0);
}

#[test]
fn where_selects_with_scalar_operands_views_and_every_dtype() {
    // Short and long (parallel) runs, with each side a full tensor or a broadcast scalar.
    for n in [7usize, (1 << 15) + 9] {
        let c = Tensor::arange(0.0, n as f64, 1.0, DType::F64).reshape([n]);
        let cond = c.lt_scalar(n as f64 / 3.0).logical_xor(&c.gt_scalar(n as f64 - 4.0));
        let want_cond: Vec<bool> = (0..n)
            .map(|i| ((i as f64) < n as f64 / 3.0) ^ (i as f64 > n as f64 - 4.0))
            .collect();
        assert_eq!(cond.to_vec::<bool>(), want_cond);
        let a = &c * 2.0;
        let b = -&c;
        let pick = |i: usize, x: f64, y: f64| if want_cond[i] { x } else { y };
        let full: Vec<f64> = (0..n).map(|i| pick(i, 2.0 * i as f64, -(i as f64))).collect();
        assert_eq!(cond.where_(&a, &b).to_vec::<f64>(), full);
        let left: Vec<f64> = (0..n).map(|i| pick(i, 2.0 * i as f64, 0.5)).collect();
        assert_eq!(cond.where_(&a, &a.scalar_like(0.5)).to_vec::<f64>(), left);
        let right: Vec<f64> = (0..n).map(|i| pick(i, -1.5, -(i as f64))).collect();
        assert_eq!(cond.where_(&b.scalar_like(-1.5), &b).to_vec::<f64>(), right);
        let both: Vec<f32> = (0..n).map(|i| pick(i, 1.0, -0.0) as f32).collect();
        let f = a.cast(DType::F32);
        let got = cond.where_(&f.scalar_like(1.0), &f.scalar_like(-0.0)).to_vec::<f32>();
        assert!(
            got.iter().zip(&both).all(|(g, w)| g.to_bits() == w.to_bits()),
            "signed zeros kept"
        );
        // A reversed view takes the strided path.
        let rev: Vec<f64> = (0..n).map(|i| pick(i, 2.0 * (n - 1 - i) as f64, -(i as f64))).collect();
        assert_eq!(cond.where_(&a.flip(0), &b).to_vec::<f64>(), rev);
        // Integers and bools.
        let ints: Vec<i64> = (0..n).map(|i| if want_cond[i] { i as i64 } else { -7 }).collect();
        let ci = c.cast(DType::I64);
        assert_eq!(cond.where_(&ci, &ci.scalar_like(-7.0)).to_vec::<i64>(), ints);
        let bools: Vec<bool> = want_cond.iter().map(|&w| !w).collect();
        let t = Tensor::full(&[n], 1.0, DType::Bool);
        assert_eq!(cond.where_(&t.logical_not(), &t).to_vec::<bool>(), bools);
    }
    // A scalar condition selects a whole side.
    let x = nb::tensor([1.0, 2.0]);
    assert_eq!(
        nb::tensor(true).where_(&x, &x.scalar_like(9.0)).to_vec::<f32>(),
        vec![1.0, 2.0]
    );
    assert_eq!(
        nb::tensor(false).where_(&x, &x.scalar_like(9.0)).to_vec::<f32>(),
        vec![9.0, 9.0]
    );
}

#[test]
fn errors_name_the_op_shapes_and_dtypes() {
    let m = panic_message(|| {
        Tensor::ones(&[3, 4], DType::F32).matmul(&Tensor::ones(&[5, 2], DType::F32));
    });
    assert_eq!(
        m,
        "matmul: inner dimensions differ: lhs [3, 4] (f32) x rhs [5, 2] (f32); the last axis of lhs must equal the second-to-last of rhs"
    );
    let m = panic_message(|| {
        let _ = Tensor::ones(&[2, 3], DType::F32) + Tensor::ones(&[4], DType::F32);
    });
    assert!(
        m.starts_with("add: shapes [2, 3] and [4] cannot be broadcast together"),
        "{m}"
    );
    let m = panic_message(|| {
        nb::tensor([1, 2]).exp();
    });
    assert!(m.contains("exp") && m.contains("i64") && m.contains("cast"), "{m}");
    let m = panic_message(|| {
        nb::tensor([1.0, 2.0]).sum(3, false);
    });
    assert!(m.contains("sum: axis 3 is out of range for a tensor of rank 1"), "{m}");
    let m = panic_message(|| {
        nb::tensor([1.0, 2.0]).take(&nb::tensor([5]), 0);
    });
    assert!(m.contains("take: index 5 is out of range"), "{m}");
    let m = panic_message(|| {
        nb::tensor([1.0, 2.0, 3.0]).reshape([2, 2]);
    });
    assert!(m.contains("reshape") && m.contains("[3]"), "{m}");
}

#[test]
fn full_reductions_read_as_shortly_as_sum_all() {
    let x = Tensor::from_vec(vec![3.0f64, -1.0, 4.0, 1.0, -5.0, 9.0], &[2, 3]);
    assert_eq!(x.max_all().item::<f64>(), 9.0);
    assert_eq!(x.min_all().item::<f64>(), -5.0);
    assert_eq!(x.prod_all().item::<f64>(), 540.0);
    assert_eq!(x.argmax_all().item::<i64>(), 5);
    assert_eq!(x.argmin_all().item::<i64>(), 4);
    let v = [3.0f64, -1.0, 4.0, 1.0, -5.0, 9.0];
    let mean = v.iter().sum::<f64>() / 6.0;
    let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / 6.0;
    assert!((x.var_all().item::<f64>() - var).abs() < 1e-12);
    let lse = x.logsumexp_all().item::<f64>();
    let want = [3.0f64, -1.0, 4.0, 1.0, -5.0, 9.0]
        .iter()
        .map(|v| v.exp())
        .sum::<f64>()
        .ln();
    assert!((lse - want).abs() < 1e-12);
    for t in [
        x.max_all(),
        x.min_all(),
        x.prod_all(),
        x.var_all(),
        x.logsumexp_all(),
        x.argmax_all(),
    ] {
        assert_eq!(t.shape(), &[] as &[usize]);
    }
}

/// Reductions over the leading axis of every kind of `[rows, cols]` view the CPU kernel splits
/// differently (one thread, blocks of rows, strips of columns for a few long rows) agree with
/// a plain loop, element for element.
#[test]
fn leading_axis_reductions_agree_with_a_loop_for_every_split() {
    for (rows, cols) in [(3, 7), (3, 40_000), (20, 40_000), (1, 70_000), (600, 300), (5000, 13)] {
        let data: Vec<f64> = (0..rows * cols).map(|i| ((i * 7919) % 1013) as f64 - 500.0).collect();
        let x = Tensor::from_vec(data.clone(), &[rows, cols]);
        let (sum, max) = (x.sum(0, false).to_vec::<f64>(), x.max(0, false).to_vec::<f64>());
        for c in 0..cols {
            let column = (0..rows).map(|r| data[r * cols + c]);
            assert_eq!(
                sum[c],
                column.clone().sum::<f64>(),
                "sum, column {c} of [{rows}, {cols}]"
            );
            assert_eq!(
                max[c],
                column.fold(f64::MIN, f64::max),
                "max, column {c} of [{rows}, {cols}]"
            );
        }
    }
}
