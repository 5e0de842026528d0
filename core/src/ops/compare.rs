//! Comparisons (giving bool, with no gradient) and `where` selection.

use super::{broadcast_aligned, promote_pair, require_same_device};
use crate::backend::CmpOp;
use crate::dtype::DType;
use crate::tensor::Tensor;
use crate::trace::Rule;

fn compare(op: CmpOp, name: &str, a: &Tensor, b: &Tensor) -> Tensor {
    require_same_device(name, a, b);
    let (a, b) = promote_pair(a, b);
    let views = broadcast_aligned(name, &[&a, &b]);
    Tensor::untraced(a.backend().compare(op, &views[0], &views[1]), &[&a, &b])
}

macro_rules! comparisons {
    ($($(#[$doc:meta])* $name:ident, $scalar:ident => $op:ident;)*) => {
        impl Tensor {
            $(
                $(#[$doc])*
                pub fn $name(&self, other: &Tensor) -> Tensor {
                    compare(CmpOp::$op, stringify!($name), self, other)
                }
                $(#[$doc])*
                /// (Against a scalar of this tensor's dtype.)
                pub fn $scalar(&self, value: f64) -> Tensor {
                    compare(CmpOp::$op, stringify!($name), self, &self.scalar_like(value))
                }
            )*
        }
    };
}

comparisons! {
    /// Elementwise `==` with broadcasting; bool result, no gradient.
    eq, eq_scalar => Eq;
    /// Elementwise `!=` with broadcasting; bool result, no gradient.
    ne, ne_scalar => Ne;
    /// Elementwise `<` with broadcasting; bool result, no gradient.
    lt, lt_scalar => Lt;
    /// Elementwise `<=` with broadcasting; bool result, no gradient.
    le, le_scalar => Le;
    /// Elementwise `>` with broadcasting; bool result, no gradient.
    gt, gt_scalar => Gt;
    /// Elementwise `>=` with broadcasting; bool result, no gradient.
    ge, ge_scalar => Ge;
}

struct WhereRule;

impl Rule for WhereRule {
    fn name(&self) -> String {
        "where".into()
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        self.vjp_wanted(inputs, out, ct, &[false, true, true])
    }
    // A constant branch (the zero of relu's rule, a literal fill) gets no cotangent: that
    // skips a select and a reduction to its shape.
    fn vjp_wanted(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor, wanted: &[bool]) -> Vec<Option<Tensor>> {
        let (c, a, b) = (&inputs[0], &inputs[1], &inputs[2]);
        let zero = ct.scalar_like(0.0);
        vec![
            None,
            wanted[1].then(|| c.where_(ct, &zero).sum_to_shape(a.shape())),
            wanted[2].then(|| c.where_(&zero, ct).sum_to_shape(b.shape())),
        ]
    }
    fn jvp(&self, inputs: &[Tensor], out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let zero = out.zeros_like();
        let ta = tangents[1].clone().unwrap_or_else(|| zero.clone());
        let tb = tangents[2].clone().unwrap_or(zero);
        Some(inputs[0].where_(&ta, &tb))
    }
}

impl Tensor {
    /// `self ? a : b` elementwise, with `self` a bool condition; all three broadcast together.
    /// Gradients flow to `a` where the condition holds and to `b` elsewhere.
    pub fn where_(&self, a: &Tensor, b: &Tensor) -> Tensor {
        if self.dtype() != DType::Bool {
            panic!(
                "where: the condition must be bool, got {} with shape {:?}; compare first (e.g. x.gt_scalar(0.0))",
                self.dtype(),
                self.shape()
            );
        }
        require_same_device("where", self, a);
        require_same_device("where", a, b);
        let (a, b) = promote_pair(a, b);
        let views = broadcast_aligned("where", &[self, &a, &b]);
        let raw = a.backend().select(&views[0], &views[1], &views[2]);
        if a.dtype().is_float() {
            Tensor::record(raw, &[self, &a, &b], || WhereRule)
        } else {
            Tensor::untraced(raw, &[self, &a, &b])
        }
    }
}

/// `cond ? a : b` elementwise (JAX's `jnp.where(cond, a, b)`).
pub fn where_(cond: &Tensor, a: &Tensor, b: &Tensor) -> Tensor {
    cond.where_(a, b)
}
