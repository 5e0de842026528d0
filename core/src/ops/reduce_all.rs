//! Reductions over every axis, as short as `sum_all` and `mean_all` (which live with `sum` and
//! `mean`): each returns a scalar (shape `[]`).

use super::Axes;
use crate::tensor::Tensor;

impl Tensor {
    /// Largest element (JAX's `jnp.max(x)`); ties share the gradient as in [`Tensor::max`].
    pub fn max_all(&self) -> Tensor {
        self.max(Axes::All, false)
    }
    /// Smallest element.
    pub fn min_all(&self) -> Tensor {
        self.min(Axes::All, false)
    }
    /// Product of every element.
    pub fn prod_all(&self) -> Tensor {
        self.prod(Axes::All, false)
    }
    /// Variance of every element (population variance, as `jnp.var`).
    pub fn var_all(&self) -> Tensor {
        self.var(Axes::All, false)
    }
    /// `log(sum(exp(x)))` over every element, computed stably.
    pub fn logsumexp_all(&self) -> Tensor {
        self.logsumexp(Axes::All, false)
    }
    /// Index of the first maximum of the flattened tensor (i64, no gradient).
    pub fn argmax_all(&self) -> Tensor {
        self.argmax(None, false)
    }
    /// Index of the first minimum of the flattened tensor (i64, no gradient).
    pub fn argmin_all(&self) -> Tensor {
        self.argmin(None, false)
    }
}
