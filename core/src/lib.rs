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
pub mod jit;
pub mod layout;
pub mod ops;
pub mod random;
pub mod shape;
pub mod storage;
pub mod tensor;
pub mod trace;
pub mod transforms;
pub mod tree;

pub use backend::{AdamStep, Backend, SgdStep, register_backend, synchronize};
pub use device::Device;
pub use dtype::{DType, Element, bf16, f16};
pub use error::{Error, Result};
pub use jit::{CacheInfo, Jit, jit};
pub use ops::Axes;
pub use ops::attention::scaled_dot_product_attention;
pub use ops::compare::where_;
pub use ops::conv::{Conv2dOptions, ConvAlgorithm, conv_transpose2d, conv2d};
pub use ops::create::{TensorLiteral, tensor, tensor_of};
pub use ops::cross_entropy::{CrossEntropyOptions, Reduction, cross_entropy, cross_entropy_with};
pub use ops::index::one_hot;
pub use ops::nn::mse;
pub use ops::optim::{adam_update, sgd_update};
pub use ops::pool::{Pool2dOptions, avg_pool2d, avg_pool2d_with, max_pool2d, max_pool2d_with};
pub use ops::shape::{Sl, concatenate, stack};
pub use ops::sync_norm::CrossRankSum;
pub use random::Rng;
pub use tensor::Tensor;
pub use transforms::api::{
    grad, grad_with_aux, jvp, jvp_with_aux, value_and_grad, value_and_grad_with_aux, vjp, vjp_with_aux, vmap, vmap_with,
};
pub use transforms::backward::{BackwardOptions, GradSyncHook, backward};
pub use transforms::control::{cond, scan, scan_with};
pub use transforms::custom::{custom_jvp, custom_vjp};
pub use transforms::graph::{format_graph, trace_graph};
pub use transforms::jacobian::{
    hessian, hessian_tree, jacfwd, jacfwd_multi, jacfwd_with_aux, jacrev, jacrev_multi, jacrev_with_aux,
};
pub use transforms::jvp::jvp_many;
pub use transforms::positional::{
    Argnums, GradOptions, grad_with, grad_with_aux_with, hessian_with, jacfwd_many_with, jacfwd_with, jacrev_many_with,
    jacrev_with, value_and_grad_with, value_and_grad_with_aux_with,
};
pub use transforms::remat::checkpoint;
pub use transforms::vjp::{VjpFn, vjp_many};
pub use transforms::vmap::vmap_many;
pub use tree::Tree;
