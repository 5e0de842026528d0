//! Elementwise functions of one tensor and their derivatives.
//!
//! Every primitive here is elementwise, so its VJP and JVP are the same product
//! `g * f'(x)`: one function per op gives both.

use super::require_float;
use crate::backend::UnaryOp;
use crate::dtype::DType;
use crate::tensor::Tensor;
use crate::trace::Rule;

/// The derivative rule of an elementwise unary primitive.
struct UnaryRule(UnaryOp);

/// `g * f'(x)` for primitive `op`, with `out = f(x)`; `None` where the derivative is zero.
fn scale_by_derivative(op: UnaryOp, x: &Tensor, out: &Tensor, g: &Tensor) -> Option<Tensor> {
    Some(match op {
        UnaryOp::Neg => -g,
        UnaryOp::Exp => g * out,
        UnaryOp::Log => g / x,
        UnaryOp::Log1p => g / (x + 1.0),
        UnaryOp::Sqrt => g * 0.5 / out,
        UnaryOp::Rsqrt => g * -0.5 * out / x,
        UnaryOp::Sin => g * x.cos(),
        UnaryOp::Cos => -(g * x.sin()),
        UnaryOp::Tanh => g * (1.0 - out * out),
        UnaryOp::Sigmoid => g * out * (1.0 - out),
        // JAX's rules: g where x >= 0 (so +g at 0), and g only where x > 0 (0 at 0), as
        // selections, so an infinite cotangent on the other side gives 0, not NaN.
        UnaryOp::Abs => x.ge_scalar(0.0).where_(g, &-g),
        UnaryOp::Relu => x.gt_scalar(0.0).where_(g, &g.scalar_like(0.0)),
        // 2/sqrt(pi) e^(-x^2)
        UnaryOp::Erf => g * (-(x * x)).exp() * std::f64::consts::FRAC_2_SQRT_PI,
        // The first derivatives of GELU are primitives (one pass); theirs are composed.
        UnaryOp::Gelu => g * unary(x, UnaryOp::GeluDerivative),
        UnaryOp::GeluExact => g * unary(x, UnaryOp::GeluExactDerivative),
        UnaryOp::GeluDerivative => g * gelu_second_derivative(x),
        // phi(x) (2 - x^2), phi the standard normal density
        UnaryOp::GeluExactDerivative => {
            let density = (x.square() * -0.5).exp() * crate::backend::NORMAL_DENSITY_SCALE;
            g * density * (-x.square() + 2.0)
        }
        UnaryOp::Sign | UnaryOp::Not | UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round | UnaryOp::Trunc => {
            return None;
        }
    })
}

/// GELU's (tanh form) second derivative in ops: with `u = c (x + a x^3)`, `t = tanh(u)`,
/// `s = 1 - t^2`, it is `s u' - x t s u'^2 + 0.5 x s u''` (`u' = c (1 + 3 a x^2)`, `u'' = 6 a c x`).
fn gelu_second_derivative(x: &Tensor) -> Tensor {
    use crate::backend::{GELU_CUBIC, gelu_tanh_scale};
    let c = gelu_tanh_scale();
    let t = ((x + x.powf(3.0) * GELU_CUBIC) * c).tanh();
    let s = -t.square() + 1.0;
    let du = (x.square() * (3.0 * GELU_CUBIC) + 1.0) * c;
    let d2u = x * (6.0 * GELU_CUBIC * c);
    &s * &du - x * &t * &s * du.square() + x * 0.5 * &s * d2u
}

/// GELU as one primitive, `exact` through erf, else the tanh approximation; its derivative is
/// one primitive too.
pub(crate) fn gelu(x: &Tensor, exact: bool) -> Tensor {
    unary(x, if exact { UnaryOp::GeluExact } else { UnaryOp::Gelu })
}

/// True for the primitives whose derivative is zero wherever it exists (step functions): their
/// results are not traced, as in JAX, where their JVP is zeros.
fn is_step(op: UnaryOp) -> bool {
    matches!(
        op,
        UnaryOp::Sign | UnaryOp::Floor | UnaryOp::Ceil | UnaryOp::Round | UnaryOp::Trunc
    )
}

impl Rule for UnaryRule {
    fn name(&self) -> String {
        format!("{:?}", self.0).to_lowercase()
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![scale_by_derivative(self.0, &inputs[0], out, ct)]
    }
    fn jvp(&self, inputs: &[Tensor], out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        scale_by_derivative(self.0, &inputs[0], out, tangents[0].as_ref()?)
    }
}

fn unary(x: &Tensor, op: UnaryOp) -> Tensor {
    let raw = x.backend().unary(op, x.raw());
    if x.dtype().is_float() && !is_step(op) {
        Tensor::record(raw, &[x], || UnaryRule(op))
    } else {
        Tensor::untraced(raw, &[x])
    }
}

macro_rules! float_unary {
    ($($(#[$doc:meta])* $name:ident => $op:ident),* $(,)?) => {
        impl Tensor {
            $(
                $(#[$doc])*
                pub fn $name(&self) -> Tensor {
                    require_float(stringify!($name), self);
                    unary(self, UnaryOp::$op)
                }
            )*
        }
    };
}

float_unary! {
    /// `e^x`, elementwise.
    exp => Exp,
    /// Natural logarithm, elementwise.
    log => Log,
    /// `log(1 + x)`, accurate for small `x`.
    log1p => Log1p,
    /// Square root, elementwise.
    sqrt => Sqrt,
    /// `1 / sqrt(x)`, elementwise.
    rsqrt => Rsqrt,
    /// Sine, elementwise.
    sin => Sin,
    /// Cosine, elementwise.
    cos => Cos,
    /// Hyperbolic tangent, elementwise.
    tanh => Tanh,
    /// Logistic sigmoid `1 / (1 + e^-x)`, computed without overflow.
    sigmoid => Sigmoid,
    /// The error function, elementwise; derivative `2/sqrt(pi) e^(-x^2)`.
    erf => Erf,
    /// Largest integer not above `x` (as a float); zero derivative, as JAX.
    floor => Floor,
    /// Smallest integer not below `x` (as a float); zero derivative, as JAX.
    ceil => Ceil,
    /// Nearest integer with ties to even (`round(0.5) = 0`, `round(1.5) = 2`, as NumPy and
    /// JAX); zero derivative.
    round => Round,
    /// Integer part, toward zero (as a float); zero derivative, as JAX.
    trunc => Trunc,
}

impl Tensor {
    /// `-x`, elementwise (floats and integers).
    pub fn neg(&self) -> Tensor {
        self.require_numeric("neg");
        unary(self, UnaryOp::Neg)
    }

    /// Absolute value (floats and integers); its derivative is `sign(x)` but `+1` at 0 (as JAX).
    pub fn abs(&self) -> Tensor {
        self.require_numeric("abs");
        unary(self, UnaryOp::Abs)
    }

    /// -1, 0 or 1 by the sign of each element; zero derivative.
    pub fn sign(&self) -> Tensor {
        self.require_numeric("sign");
        unary(self, UnaryOp::Sign)
    }

    /// `max(x, 0)`, elementwise; derivative 0 at 0 (as JAX).
    pub fn relu(&self) -> Tensor {
        self.require_numeric("relu");
        unary(self, UnaryOp::Relu)
    }

    /// `x * x`, elementwise.
    pub fn square(&self) -> Tensor {
        self * self
    }

    /// Logical not of a bool tensor.
    pub fn logical_not(&self) -> Tensor {
        if self.dtype() != DType::Bool {
            panic!(
                "logical_not: needs a bool tensor, got {} with shape {:?}",
                self.dtype(),
                self.shape()
            );
        }
        unary(self, UnaryOp::Not)
    }

    fn require_numeric(&self, op: &str) {
        if self.dtype() == DType::Bool {
            panic!(
                "{op}: not defined for bool tensors (shape {:?}); cast to a number dtype first",
                self.shape()
            );
        }
    }
}
