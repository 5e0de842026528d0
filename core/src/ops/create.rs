//! Construction: literals, filled tensors, ranges, identity, seeded random draws.

use crate::backend::backend_for;
use crate::device::Device;
use crate::dtype::{DType, Element};
use crate::tensor::Tensor;

impl Tensor {
    /// `shape` filled with `value` as `dtype` on `device`.
    pub fn full_on(shape: &[usize], value: f64, dtype: DType, device: Device) -> Tensor {
        Tensor::from_raw(backend_for(device).full(shape, dtype, value, device))
    }

    /// `shape` filled with `value` as `dtype`, on the CPU.
    pub fn full(shape: &[usize], value: f64, dtype: DType) -> Tensor {
        Tensor::full_on(shape, value, dtype, Device::Cpu)
    }

    /// Zeros of `shape` and `dtype`.
    pub fn zeros(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 0.0, dtype)
    }

    /// Ones of `shape` and `dtype`.
    pub fn ones(shape: &[usize], dtype: DType) -> Tensor {
        Tensor::full(shape, 1.0, dtype)
    }

    /// `start, start + step, ...` up to but excluding `stop` (NumPy's `arange`), on the CPU.
    /// Panics when `start`, `stop` or `step` is not finite, or `step` is 0.
    pub fn arange(start: f64, stop: f64, step: f64, dtype: DType) -> Tensor {
        Tensor::arange_on(start, stop, step, dtype, Device::Cpu)
    }

    /// [`Tensor::arange`] made on `device` (a GPU computes it there; nothing is copied).
    /// Panics when `start`, `stop` or `step` is not finite, or `step` is 0.
    pub fn arange_on(start: f64, stop: f64, step: f64, dtype: DType, device: Device) -> Tensor {
        if step == 0.0 || !step.is_finite() || !start.is_finite() || !stop.is_finite() {
            panic!("arange: start, stop and step must be finite and step non-zero, got {start}, {stop}, {step}");
        }
        let n = ((stop - start) / step).ceil().max(0.0) as usize;
        Tensor::from_raw(backend_for(device).arange(n, start, step, dtype, device))
    }

    /// `num` evenly spaced values from `start` to `stop` inclusive (NumPy's `linspace`).
    pub fn linspace(start: f64, stop: f64, num: usize, dtype: DType) -> Tensor {
        let v: Vec<f64> = match num {
            0 => vec![],
            1 => vec![start],
            _ => (0..num)
                .map(|i| start + (stop - start) * i as f64 / (num - 1) as f64)
                .collect(),
        };
        Tensor::from_vec(v, &[num]).cast(dtype)
    }

    /// The `n x n` identity matrix.
    pub fn eye(n: usize, dtype: DType) -> Tensor {
        fn build<T: Element>(n: usize) -> Tensor
        where
            Vec<T>: crate::storage::IntoCpuBuffer,
        {
            let mut v = vec![T::from_f64(0.0); n * n];
            for i in 0..n {
                v[i * n + i] = T::from_f64(1.0);
            }
            Tensor::from_vec(v, &[n, n])
        }
        crate::with_element_type!(dtype, T => build::<T>(n))
    }

    /// [`Tensor::eye`] made on `device`: on a GPU, from two index ramps compared there, so
    /// nothing is copied from the host.
    pub fn eye_on(n: usize, dtype: DType, device: Device) -> Tensor {
        if device == Device::Cpu {
            return Tensor::eye(n, dtype);
        }
        Tensor::identity_columns(n, 0, n, dtype, device)
    }

    /// Columns `first .. first + cols` of the `rows x rows` identity, made on `device` by
    /// comparing two index ramps there (nothing built on the host, never the whole identity).
    pub(crate) fn identity_columns(rows: usize, first: usize, cols: usize, dtype: DType, device: Device) -> Tensor {
        let r = Tensor::arange_on(0.0, rows as f64, 1.0, DType::I64, device);
        let c = Tensor::arange_on(first as f64, (first + cols) as f64, 1.0, DType::I64, device);
        r.reshape([rows, 1]).eq(&c.reshape([1, cols])).cast(dtype)
    }

    /// `column - row` for every element of a `[rows, cols]` matrix (i64), made from two ramps
    /// on `device`: the diagonal offsets that triangle and band masks compare with (no host
    /// matrix is built and copied over).
    pub(crate) fn diagonal_offsets(rows: usize, cols: usize, device: Device) -> Tensor {
        let r = Tensor::arange_on(0.0, rows as f64, 1.0, DType::I64, device);
        let c = Tensor::arange_on(0.0, cols as f64, 1.0, DType::I64, device);
        c.reshape([1, cols]) - r.reshape([rows, 1])
    }
}

/// Nested Rust literals that become tensors: scalars, arrays, nested arrays and vectors.
/// Float literals give the default float dtype f32 (as JAX does), integers give i64.
pub trait TensorLiteral {
    /// Appends the elements (row-major) and returns the shape.
    fn collect_into(&self, out: &mut LiteralData) -> Vec<usize>;
}

/// Elements gathered from a literal, by kind.
#[derive(Default, Debug)]
pub struct LiteralData {
    floats: Vec<f64>,
    ints: Vec<i64>,
    bools: Vec<bool>,
}

macro_rules! scalar_literal {
    ($t:ty, $field:ident, $conv:expr_2021) => {
        impl TensorLiteral for $t {
            fn collect_into(&self, out: &mut LiteralData) -> Vec<usize> {
                out.$field.push($conv(*self));
                vec![]
            }
        }
    };
}
scalar_literal!(f64, floats, |v| v);
scalar_literal!(f32, floats, |v: f32| v as f64);
scalar_literal!(i64, ints, |v| v);
scalar_literal!(i32, ints, |v: i32| v as i64);
scalar_literal!(bool, bools, |v| v);

fn collect_seq<T: TensorLiteral>(items: &[T], out: &mut LiteralData) -> Vec<usize> {
    let mut inner: Option<Vec<usize>> = None;
    for it in items {
        let s = it.collect_into(out);
        match &inner {
            None => inner = Some(s),
            Some(prev) if *prev != s => {
                panic!(
                    "tensor: ragged nested literal: rows of shapes {prev:?} and {s:?}; every row must have one shape"
                )
            }
            _ => {}
        }
    }
    let mut shape = vec![items.len()];
    shape.extend(inner.unwrap_or_default());
    shape
}

impl<T: TensorLiteral, const N: usize> TensorLiteral for [T; N] {
    fn collect_into(&self, out: &mut LiteralData) -> Vec<usize> {
        collect_seq(self, out)
    }
}

impl<T: TensorLiteral> TensorLiteral for Vec<T> {
    fn collect_into(&self, out: &mut LiteralData) -> Vec<usize> {
        collect_seq(self, out)
    }
}

impl<T: TensorLiteral> TensorLiteral for &[T] {
    fn collect_into(&self, out: &mut LiteralData) -> Vec<usize> {
        collect_seq(self, out)
    }
}

fn literal_parts(data: &impl TensorLiteral) -> (LiteralData, Vec<usize>) {
    let mut d = LiteralData::default();
    let shape = data.collect_into(&mut d);
    let kinds = [!d.floats.is_empty(), !d.ints.is_empty(), !d.bools.is_empty()];
    if kinds.iter().filter(|&&k| k).count() > 1 {
        panic!("tensor: a literal mixes floats, integers and bools; use one kind");
    }
    (d, shape)
}

/// A tensor from a Rust literal: `tensor(3.0)`, `tensor([1.0, 2.0])`, `tensor([[1, 2], [3, 4]])`.
/// Floats become f32 (the default float dtype), integers i64, bools bool.
pub fn tensor(data: impl TensorLiteral) -> Tensor {
    let (d, shape) = literal_parts(&data);
    if !d.ints.is_empty() {
        Tensor::from_vec(d.ints, &shape)
    } else if !d.bools.is_empty() {
        Tensor::from_vec(d.bools, &shape)
    } else {
        Tensor::from_vec(d.floats.iter().map(|&v| v as f32).collect(), &shape)
    }
}

/// A tensor from a Rust literal with an explicit dtype: `tensor_of([1.0, 2.0], DType::F64)`.
pub fn tensor_of(data: impl TensorLiteral, dtype: DType) -> Tensor {
    let (d, shape) = literal_parts(&data);
    let base = if !d.ints.is_empty() {
        Tensor::from_vec(d.ints, &shape)
    } else if !d.bools.is_empty() {
        Tensor::from_vec(d.bools, &shape)
    } else {
        Tensor::from_vec(d.floats, &shape)
    };
    base.cast(dtype)
}
