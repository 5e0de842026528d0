//! nabla-rs: an autodiff runtime with the API of Nabla and JAX — `grad`, `value_and_grad`,
//! `vjp`, `jvp` and PyTorch-style `backward` — on eager tensors.
//!
//! ```
//! use nabla as nb;
//! let df = nb::grad(|x: &nb::Tensor| (x * x * x).sum_all());
//! let g = df(&nb::tensor([1.0, 2.0]));
//! assert_eq!(g.to_vec::<f32>(), vec![3.0, 12.0]);
//! ```

pub use nabla_core::*;
pub use nabla_derive::Tree;
