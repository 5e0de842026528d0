//! nabla-core: tensors, ops with derivative rules, tracing, the autodiff transforms and the
//! CPU backend of nabla-rs. Users depend on the facade crate `nabla` (`use nabla as nb;`).
//!
//! Layers, bottom up: [`storage`]/[`layout`] (buffers and strided views), [`backend`] (the
//! kernels a device provides; CPU built in), [`Tensor`] and [`ops`] (checked ops that record
//! derivative rules when traced), [`trace`] (levels, nodes, sweeps) and [`transforms`].

pub mod backend;
pub mod device;
mod display;
pub mod dtype;
pub mod error;
pub mod layout;
pub mod ops;
pub mod random;
pub mod shape;
pub mod storage;
pub mod tensor;
pub mod trace;
pub mod transforms;

pub use backend::{register_backend, Backend};
pub use device::Device;
pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub use ops::compare::where_;
pub use ops::create::{tensor, tensor_of, TensorLiteral};
pub use ops::index::one_hot;
pub use ops::nn::{cross_entropy, mse};
pub use ops::shape::{concatenate, stack, Sl};
pub use ops::Axes;
pub use random::Rng;
pub use tensor::Tensor;
pub use transforms::backward::{backward, set_grad_sync_hook, BackwardOptions, GradSyncHook};
pub use transforms::graph::{format_graph, trace_graph};
pub use transforms::jvp::{jvp, jvp_many};
pub use transforms::vjp::{grad, value_and_grad, vjp, vjp_many, VjpFn};
pub use transforms::vmap::{vmap, vmap_many};
