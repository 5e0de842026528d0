//! Elementwise functions of two tensors with NumPy broadcasting, and their derivatives.

use super::{broadcast_aligned, promote_pair, require_float, require_same_device};
use crate::backend::BinaryOp;
use crate::dtype::DType;
use crate::tensor::Tensor;
use crate::trace::Rule;

fn op_name(op: BinaryOp) -> &'static str {
    match op {
        BinaryOp::Add => "add",
        BinaryOp::Sub => "sub",
        BinaryOp::Mul => "mul",
        BinaryOp::Div => "div",
        BinaryOp::Pow => "pow",
        BinaryOp::Maximum => "maximum",
        BinaryOp::Minimum => "minimum",
        BinaryOp::And => "logical_and",
        BinaryOp::Or => "logical_or",
        BinaryOp::Xor => "logical_xor",
    }
}

struct BinaryRule(BinaryOp);

/// `1` where `x` wins against `y` under `strict`, `0.5` on ties, else `0` (JAX's convention for
/// the gradient of maximum/minimum).
fn winner_mask(x: &Tensor, y: &Tensor, strict: fn(&Tensor, &Tensor) -> Tensor) -> Tensor {
    let d = x.dtype();
    strict(x, y).cast(d) + x.eq(y).cast(d) * 0.5
}

impl BinaryRule {
    /// The partial derivatives (d out/d a, d out/d b) multiplied by `g`, before un-broadcasting.
    fn partials(
        &self,
        a: &Tensor,
        b: &Tensor,
        out: &Tensor,
        ga: Option<&Tensor>,
        gb: Option<&Tensor>,
    ) -> (Option<Tensor>, Option<Tensor>) {
        match self.0 {
            BinaryOp::Add => (ga.cloned(), gb.cloned()),
            BinaryOp::Sub => (ga.cloned(), gb.map(|g| -g)),
            BinaryOp::Mul => (ga.map(|g| g * b), gb.map(|g| g * a)),
            BinaryOp::Div => (ga.map(|g| g / b), gb.map(|g| -(g * out / b))),
            // JAX's rules for a float exponent: b a^(b-1), and a^b log a with log 0 taken as 0
            // (so 0 * a^b: 0 where a^b is finite, NaN where a = 0 and b < 0).
            BinaryOp::Pow => (
                ga.map(|g| g * (b * a.pow(&(b - 1.0)))),
                gb.map(|g| {
                    let safe_a = a.eq_scalar(0.0).where_(&a.scalar_like(1.0), a);
                    g * (safe_a.log() * out)
                }),
            ),
            BinaryOp::Maximum => (
                ga.map(|g| g * winner_mask(a, b, Tensor::gt)),
                gb.map(|g| g * winner_mask(b, a, Tensor::gt)),
            ),
            BinaryOp::Minimum => (
                ga.map(|g| g * winner_mask(a, b, Tensor::lt)),
                gb.map(|g| g * winner_mask(b, a, Tensor::lt)),
            ),
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => (None, None),
        }
    }
}

impl Rule for BinaryRule {
    fn name(&self) -> String {
        op_name(self.0).into()
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        self.vjp_wanted(inputs, out, ct, &[true, true])
    }
    // A constant operand (the scalar of `x * 0.125`, a literal) gets no cotangent: that skips
    // a product and a reduction to its shape, the size of the other operand each.
    fn vjp_wanted(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor, wanted: &[bool]) -> Vec<Option<Tensor>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let (da, db) = self.partials(a, b, out, wanted[0].then_some(ct), wanted[1].then_some(ct));
        vec![
            da.map(|g| g.sum_to_shape(a.shape())),
            db.map(|g| g.sum_to_shape(b.shape())),
        ]
    }
    fn jvp(&self, inputs: &[Tensor], out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let (da, db) = self.partials(&inputs[0], &inputs[1], out, tangents[0].as_ref(), tangents[1].as_ref());
        let da = da.map(|t| t.broadcast_to(out.shape()));
        match (da, db) {
            (Some(x), Some(y)) => Some(x + y),
            (Some(x), None) => Some(x),
            (None, Some(y)) => Some(y.broadcast_to(out.shape())),
            (None, None) => None,
        }
    }
}

/// The broadcasting binary primitive (operands promoted to one dtype).
pub(crate) fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Tensor {
    let name = op_name(op);
    require_same_device(name, a, b);
    let (a, b) = promote_pair(a, b);
    let logical = matches!(op, BinaryOp::And | BinaryOp::Or | BinaryOp::Xor);
    if logical != (a.dtype() == DType::Bool) {
        panic!(
            "{name}: unsupported dtype {} (shapes {:?} and {:?}); logical ops take bool tensors, arithmetic takes numbers",
            a.dtype(),
            a.shape(),
            b.shape()
        );
    }
    let raw = if a.shape() == b.shape() && a.nb() == 0 && b.nb() == 0 {
        a.backend().binary(op, a.raw(), b.raw())
    } else {
        let views = broadcast_aligned(name, &[&a, &b]);
        a.backend().binary(op, &views[0], &views[1])
    };
    if a.dtype().is_float() {
        Tensor::record(raw, &[&a, &b], || BinaryRule(op))
    } else {
        Tensor::untraced(raw, &[&a, &b])
    }
}

impl Tensor {
    /// `self + other` with broadcasting.
    pub fn add(&self, other: &Tensor) -> Tensor {
        binary(BinaryOp::Add, self, other)
    }
    /// `self - other` with broadcasting.
    pub fn sub(&self, other: &Tensor) -> Tensor {
        binary(BinaryOp::Sub, self, other)
    }
    /// `self * other` with broadcasting.
    pub fn mul(&self, other: &Tensor) -> Tensor {
        binary(BinaryOp::Mul, self, other)
    }
    /// `self / other` with broadcasting (integers: floor division).
    pub fn div(&self, other: &Tensor) -> Tensor {
        binary(BinaryOp::Div, self, other)
    }
    /// `self ^ other` with broadcasting.
    pub fn pow(&self, other: &Tensor) -> Tensor {
        binary(BinaryOp::Pow, self, other)
    }
    /// Elementwise maximum with broadcasting; ties split the gradient equally.
    pub fn maximum(&self, other: &Tensor) -> Tensor {
        binary(BinaryOp::Maximum, self, other)
    }
    /// Elementwise minimum with broadcasting; ties split the gradient equally.
    pub fn minimum(&self, other: &Tensor) -> Tensor {
        binary(BinaryOp::Minimum, self, other)
    }
    /// Logical and of bool tensors.
    pub fn logical_and(&self, other: &Tensor) -> Tensor {
        binary(BinaryOp::And, self, other)
    }
    /// Logical or of bool tensors.
    pub fn logical_or(&self, other: &Tensor) -> Tensor {
        binary(BinaryOp::Or, self, other)
    }
    /// Logical exclusive or of bool tensors.
    pub fn logical_xor(&self, other: &Tensor) -> Tensor {
        binary(BinaryOp::Xor, self, other)
    }
    /// `self ^ p` for a constant exponent `p` (cheaper than [`Tensor::pow`], no log needed).
    /// Derivatives as JAX's `x ** p`: for an integral `p` those of `x ** int(p)`, so `x^0` has
    /// derivative 0 and `x^1` derivative 1 everywhere, `x = 0` included.
    pub fn powf(&self, p: f64) -> Tensor {
        require_float("powf", self);
        let s = self.scalar_like(p);
        let rs = s.raw().with_layout(s.layout().broadcast_to(&self.layout().shape));
        let raw = self.backend().binary(BinaryOp::Pow, self.raw(), &rs);
        Tensor::record(raw, &[self], || PowScalarRule(p))
    }
    /// Elementwise maximum with a scalar.
    pub fn maximum_scalar(&self, v: f64) -> Tensor {
        self.maximum(&self.scalar_like(v))
    }
    /// Elementwise minimum with a scalar.
    pub fn minimum_scalar(&self, v: f64) -> Tensor {
        self.minimum(&self.scalar_like(v))
    }
    /// Limits every element to `[min, max]` (NumPy's `clip`).
    pub fn clamp(&self, min: f64, max: f64) -> Tensor {
        if min > max {
            panic!("clamp: min {min} is greater than max {max}");
        }
        self.maximum_scalar(min).minimum_scalar(max)
    }
}

/// The rule of `x ^ p` for a constant `p`. An integral `p` follows JAX's `x ** n` for a Python
/// int `n` (`lax.integer_pow`): derivative 0 for `n = 0` and `g` for `n = 1`, even at `x = 0`
/// where `p x^(p-1)` is `0 * inf`; any other `p` follows `jnp.power(x, p)`: `g p x^(p-1)`.
struct PowScalarRule(f64);

impl PowScalarRule {
    fn scale(&self, x: &Tensor, g: &Tensor) -> Option<Tensor> {
        let p = self.0;
        if p == 0.0 {
            None
        } else if p == 1.0 {
            Some(g.clone())
        } else if p == 2.0 {
            Some(g * (x * 2.0))
        } else {
            Some(g * (x.powf(p - 1.0) * p))
        }
    }
}

impl Rule for PowScalarRule {
    fn name(&self) -> String {
        format!("pow(p={})", self.0)
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![self.scale(&inputs[0], ct)]
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        self.scale(&inputs[0], tangents[0].as_ref()?)
    }
}
