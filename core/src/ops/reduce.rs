//! Reductions: sum, prod, max, min (primitives) and mean, var, logsumexp, argmax, argmin.

use super::{Axes, require_float};
use crate::backend::{ArgOp, ReduceOp};
use crate::dtype::DType;
use crate::shape::{normalize_axes, normalize_axis, remove_axes};
use crate::tensor::Tensor;
use crate::trace::Rule;

/// A reduction recorded in keepdims form over sorted axes.
struct ReduceRule {
    op: ReduceOp,
    axes: Vec<usize>,
}

impl ReduceRule {
    fn axes(&self) -> Vec<isize> {
        self.axes.iter().map(|&a| a as isize).collect()
    }

    /// For max/min: the indicator of the elements equal to the extremum, and their count.
    fn extremum_mask(&self, x: &Tensor, out: &Tensor) -> (Tensor, Tensor) {
        let mask = x.eq(out).cast(x.dtype());
        let count = mask.sum(self.axes(), true);
        (mask, count)
    }
}

impl Rule for ReduceRule {
    fn name(&self) -> String {
        format!("{}(axes={:?})", format!("{:?}", self.op).to_lowercase(), self.axes)
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let x = &inputs[0];
        let g = ct.broadcast_to(x.shape());
        vec![Some(match self.op {
            ReduceOp::Sum => g,
            ReduceOp::Prod => products_of_others(x, &self.axes, ct),
            ReduceOp::Max | ReduceOp::Min => {
                let (mask, count) = self.extremum_mask(x, out);
                g * mask / count
            }
        })]
    }
    fn jvp(&self, inputs: &[Tensor], out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let (x, t) = (&inputs[0], tangents[0].as_ref()?);
        Some(match self.op {
            ReduceOp::Sum => t.sum(self.axes(), true),
            ReduceOp::Prod => (t * products_of_others(x, &self.axes, &out.ones_like())).sum(self.axes(), true),
            ReduceOp::Max | ReduceOp::Min => {
                let (mask, count) = self.extremum_mask(x, out);
                (t * mask).sum(self.axes(), true) / count
            }
        })
    }
}

/// For every element of `x`, the product of the other elements of its slice over `axes`
/// (sorted), times `seed` (the reduction's keepdims shape): prod's derivative. It has no
/// division, so it is exact at zeros (as JAX's, which differentiates a tree of products), and it
/// is built from public ops, so it differentiates again.
fn products_of_others(x: &Tensor, axes: &[usize], seed: &Tensor) -> Tensor {
    if x.numel() == 0 {
        return seed.broadcast_to(x.shape());
    }
    let rest: Vec<usize> = (0..x.rank()).filter(|a| !axes.contains(a)).collect();
    let perm: Vec<usize> = axes.iter().chain(&rest).copied().collect();
    let mut inverse = vec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    let rest_shape: Vec<usize> = rest.iter().map(|&a| x.shape()[a]).collect();
    let n: usize = axes.iter().map(|&a| x.shape()[a]).product();
    let lead = |first: &[usize]| -> Vec<usize> { first.iter().chain(&rest_shape).copied().collect() };
    // The reduced axes first, flattened to one: [n, rest..].
    let flat = x.permute(&perm).reshape(lead(&[n]));
    let others = exclusive_products(&flat, &seed.reshape(lead(&[1])));
    let axes_shape: Vec<usize> = axes.iter().map(|&a| x.shape()[a]).collect();
    others.reshape(lead(&axes_shape)).permute(&inverse)
}

/// `seed * prod_{j != i} x[j]` for every `i` along the leading axis of `x` (`[n, ..]`, seed
/// `[1, ..]`): adjacent halves are multiplied pairwise up a tree, and each element receives the
/// product passed down to its pair times its partner. O(n) multiplications, log2(n) levels.
fn exclusive_products(x: &Tensor, seed: &Tensor) -> Tensor {
    let n = x.shape()[0] as isize;
    if n == 1 {
        return seed.clone();
    }
    let h = n / 2;
    let (a, b) = (
        x.slice_axis(0, Some(0), Some(h), 1),
        x.slice_axis(0, Some(h), Some(2 * h), 1),
    );
    let pairs = &a * &b;
    let odd = n % 2 == 1;
    // With an odd count the last element goes up the tree unpaired.
    let up = if odd {
        super::shape::concatenate(&[pairs, x.slice_axis(0, Some(2 * h), None, 1)], 0)
    } else {
        pairs
    };
    let down = exclusive_products(&up, seed);
    let to_pairs = if odd {
        down.slice_axis(0, Some(0), Some(h), 1)
    } else {
        down.clone()
    };
    let mut parts = vec![&to_pairs * &b, &to_pairs * &a];
    if odd {
        parts.push(down.slice_axis(0, Some(h), None, 1));
    }
    super::shape::concatenate(&parts, 0)
}

fn reduce(x: &Tensor, op: ReduceOp, name: &str, axes: Axes, keepdims: bool) -> Tensor {
    if x.dtype() == DType::Bool && op == ReduceOp::Sum {
        return reduce(&x.cast(DType::I64), op, name, axes, keepdims);
    }
    let axes = normalize_axes(name, axes.as_option(), x.rank());
    if matches!(op, ReduceOp::Max | ReduceOp::Min)
        && let Some(&a) = axes.iter().find(|&&a| x.shape()[a] == 0)
    {
        panic!(
            "{name}: axis {a} of shape {:?} is empty and {name} has no identity",
            x.shape()
        );
    }
    let kept = if axes.is_empty() {
        x.clone()
    } else {
        let physical_axes: Vec<usize> = axes.iter().map(|a| a + x.nb()).collect();
        let raw = x.backend().reduce(op, x.raw(), &physical_axes);
        if x.dtype().is_float() {
            Tensor::record(raw, &[x], || ReduceRule { op, axes: axes.clone() })
        } else {
            Tensor::untraced(raw, &[x])
        }
    };
    if keepdims {
        kept
    } else {
        kept.reshape(remove_axes(x.shape(), &axes))
    }
}

impl Tensor {
    /// Sum over `axes` (`Axes::All`, an axis, or a list); `keepdims` keeps them as extent 1.
    pub fn sum(&self, axes: impl Into<Axes>, keepdims: bool) -> Tensor {
        reduce(self, ReduceOp::Sum, "sum", axes.into(), keepdims)
    }
    /// Sum of every element, as a scalar.
    pub fn sum_all(&self) -> Tensor {
        self.sum(Axes::All, false)
    }
    /// Product over `axes`.
    pub fn prod(&self, axes: impl Into<Axes>, keepdims: bool) -> Tensor {
        reduce(self, ReduceOp::Prod, "prod", axes.into(), keepdims)
    }
    /// Maximum over `axes`; the gradient is shared equally among tied maxima.
    pub fn max(&self, axes: impl Into<Axes>, keepdims: bool) -> Tensor {
        reduce(self, ReduceOp::Max, "max", axes.into(), keepdims)
    }
    /// Minimum over `axes`; the gradient is shared equally among tied minima.
    pub fn min(&self, axes: impl Into<Axes>, keepdims: bool) -> Tensor {
        reduce(self, ReduceOp::Min, "min", axes.into(), keepdims)
    }
    /// Mean over `axes`.
    pub fn mean(&self, axes: impl Into<Axes>, keepdims: bool) -> Tensor {
        require_float("mean", self);
        let axes = axes.into();
        let count: usize = normalize_axes("mean", axes.as_option(), self.rank())
            .iter()
            .map(|&a| self.shape()[a])
            .product();
        self.sum(axes, keepdims) / count as f64
    }
    /// Mean of every element, as a scalar.
    pub fn mean_all(&self) -> Tensor {
        self.mean(Axes::All, false)
    }
    /// Population variance (ddof 0) over `axes`.
    pub fn var(&self, axes: impl Into<Axes>, keepdims: bool) -> Tensor {
        require_float("var", self);
        let axes = axes.into();
        let centered = self - self.mean(axes.clone(), true);
        (&centered * &centered).mean(axes, keepdims)
    }
    /// `log(sum(exp(x)))` over `axes`, computed stably by shifting by the maximum.
    pub fn logsumexp(&self, axes: impl Into<Axes>, keepdims: bool) -> Tensor {
        require_float("logsumexp", self);
        let axes = axes.into();
        let m = self.max(axes.clone(), true).stop_gradient();
        // An all -inf slice has max -inf: shift by 0 there so the result is -inf, not NaN.
        let finite = m.abs().lt_scalar(f64::INFINITY);
        let shift = finite.where_(&m, &m.zeros_like());
        let out = (self - &shift).exp().sum(axes.clone(), true).log() + shift;
        if keepdims {
            out
        } else {
            let keep = normalize_axes("logsumexp", axes.as_option(), self.rank());
            out.reshape(remove_axes(self.shape(), &keep))
        }
    }
    /// Index of the first maximum along `axis` (`None`: of the flattened tensor); i64, no gradient.
    pub fn argmax(&self, axis: Option<isize>, keepdims: bool) -> Tensor {
        self.arg_reduce(ArgOp::ArgMax, "argmax", axis, keepdims)
    }
    /// Index of the first minimum along `axis` (`None`: of the flattened tensor); i64, no gradient.
    pub fn argmin(&self, axis: Option<isize>, keepdims: bool) -> Tensor {
        self.arg_reduce(ArgOp::ArgMin, "argmin", axis, keepdims)
    }

    fn arg_reduce(&self, op: ArgOp, name: &str, axis: Option<isize>, keepdims: bool) -> Tensor {
        let Some(axis) = axis else {
            let flat = self.reshape([self.numel()]).arg_reduce(op, name, Some(0), false);
            return if keepdims {
                flat.reshape(vec![1; self.rank()])
            } else {
                flat
            };
        };
        let axis = normalize_axis(name, axis, self.rank().max(1));
        let x = if self.rank() == 0 {
            self.reshape([1])
        } else {
            self.clone()
        };
        if x.shape()[axis] == 0 {
            panic!("{name}: axis {axis} of shape {:?} is empty", self.shape());
        }
        let out = Tensor::untraced(x.backend().arg_reduce(op, x.raw(), axis + x.nb()), &[&x]);
        if keepdims {
            out
        } else {
            let mut shape = x.shape().to_vec();
            shape.remove(axis);
            out.reshape(&shape)
        }
    }
}
