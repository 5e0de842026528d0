//! Matrix products with NumPy semantics: matmul (1-D, 2-D, batched, broadcast), dot, outer.

use super::{aligned_layouts, bilinear_jvp, physical, require_same_device};
use crate::shape::{broadcast_shapes, try_broadcast_shapes};
use crate::tensor::Tensor;
use crate::trace::Rule;

struct MatmulRule;

impl Rule for MatmulRule {
    fn name(&self) -> String {
        "matmul".into()
    }
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        self.vjp_wanted(inputs, out, ct, &[true, true])
    }
    fn vjp_wanted(&self, inputs: &[Tensor], _o: &Tensor, ct: &Tensor, wanted: &[bool]) -> Vec<Option<Tensor>> {
        let (a, b) = (&inputs[0], &inputs[1]);
        let ga = wanted[0].then(|| ct.matmul(&b.swap_axes(-1, -2)).sum_to_shape(a.shape()));
        let gb = wanted[1].then(|| rhs_gradient(a, b, ct));
        vec![ga, gb]
    }
    fn jvp(&self, inputs: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        bilinear_jvp(inputs, t, |a, b| a.matmul(b))
    }
}

/// The gradient of the right operand of `a @ b` for the cotangent `ct`: `a^T ct` summed over
/// the batch axes that `b` lacks. When `b` is one matrix shared by a batch of left operands (a
/// linear layer over `[batch, tokens, d]`), the batch folds into the contraction,
/// `a [P*m, k]^T x ct [P*m, n]`: one product over the whole batch, where the per-batch products
/// wrote `P` matrices of `b`'s size and summed them.
fn rhs_gradient(a: &Tensor, b: &Tensor, ct: &Tensor) -> Tensor {
    let (ra, rc) = (a.rank(), ct.rank());
    // With `b`'s batch axes all 1, the cotangent's batch is `a`'s (after leading 1s), so their
    // rows line up.
    let shared_b = b.shape()[..b.rank() - 2].iter().all(|&d| d == 1);
    if rc > 2 && shared_b {
        let k = a.shape()[ra - 1];
        let n = ct.shape()[rc - 1];
        let rows = a.numel() / k.max(1);
        if rows > 0 && k > 0 {
            let a2 = a.reshape([rows, k]);
            let ct2 = ct.reshape([rows, n]);
            return a2.swap_axes(0, 1).matmul(&ct2).reshape(b.shape().to_vec());
        }
    }
    a.swap_axes(-1, -2).matmul(ct).sum_to_shape(b.shape())
}

/// The primitive: both operands at least 2-D, batch axes broadcast.
fn matmul_nd(a: &Tensor, b: &Tensor) -> Tensor {
    let (ra, rb) = (a.rank(), b.rank());
    let (m, k, k2, n) = (
        a.shape()[ra - 2],
        a.shape()[ra - 1],
        b.shape()[rb - 2],
        b.shape()[rb - 1],
    );
    if k != k2 {
        panic!(
            "matmul: inner dimensions differ: lhs {:?} ({}) x rhs {:?} ({}); the last axis of lhs must equal the second-to-last of rhs",
            a.shape(),
            a.dtype(),
            b.shape(),
            b.dtype()
        );
    }
    broadcast_shapes("matmul (batch axes)", &a.shape()[..ra - 2], &b.shape()[..rb - 2]);
    // Physical: vmap batch axes and logical batch axes all lead; align and broadcast them.
    let (layouts, _) = aligned_layouts(&[a, b], Some(ra.max(rb)));
    let pr = layouts[0].rank();
    let lead = try_broadcast_shapes(&layouts[0].shape[..pr - 2], &layouts[1].shape[..pr - 2]).expect("checked above");
    let va = a.raw().with_layout(layouts[0].broadcast_to(&physical(&lead, &[m, k])));
    let vb = b.raw().with_layout(layouts[1].broadcast_to(&physical(&lead, &[k, n])));
    let raw = a.backend().matmul(&va, &vb);
    if a.dtype().is_float() {
        Tensor::record(raw, &[a, b], || MatmulRule)
    } else {
        Tensor::untraced(raw, &[a, b])
    }
}

impl Tensor {
    /// Matrix product with NumPy's `matmul` semantics: 1-D operands are promoted to a row
    /// (lhs) or column (rhs) and that axis is removed again; leading axes broadcast.
    pub fn matmul(&self, other: &Tensor) -> Tensor {
        require_same_device("matmul", self, other);
        if self.rank() == 0 || other.rank() == 0 {
            panic!(
                "matmul: operands must be at least 1-D, got lhs {:?} ({}) and rhs {:?} ({}); use mul for scalars",
                self.shape(),
                self.dtype(),
                other.shape(),
                other.dtype()
            );
        }
        if self.dtype() != other.dtype() {
            panic!(
                "matmul: dtypes differ: lhs {:?} ({}) x rhs {:?} ({}); cast one operand",
                self.shape(),
                self.dtype(),
                other.shape(),
                other.dtype()
            );
        }
        if self.dtype() == crate::DType::Bool {
            panic!(
                "matmul: bool operands are not supported (shapes {:?} and {:?})",
                self.shape(),
                other.shape()
            );
        }
        let a = if self.rank() == 1 {
            self.expand_dims(0)
        } else {
            self.clone()
        };
        let b = if other.rank() == 1 {
            other.expand_dims(-1)
        } else {
            other.clone()
        };
        let mut out = matmul_nd(&a, &b);
        if other.rank() == 1 {
            out = out.squeeze([-1]);
        }
        if self.rank() == 1 {
            out = out.squeeze([-1 - (other.rank() != 1) as isize]);
        }
        out
    }

    /// NumPy's `dot` for 1-D and 2-D operands (inner product, matrix-vector, matrix-matrix).
    pub fn dot(&self, other: &Tensor) -> Tensor {
        if self.rank() > 2 || other.rank() > 2 {
            panic!(
                "dot: supports 1-D and 2-D operands, got {:?} and {:?}; use matmul for batches",
                self.shape(),
                other.shape()
            );
        }
        self.matmul(other)
    }

    /// Outer product of two vectors (flattened first, as NumPy): shape `[n, m]`.
    pub fn outer(&self, other: &Tensor) -> Tensor {
        self.flatten().expand_dims(1) * other.flatten().expand_dims(0)
    }
}
