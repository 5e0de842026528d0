#![doc = include_str!("../README.md")]
//!
//! The facade crate re-exports `nabla-core` and the `#[derive(Tree)]` macro.

pub use nabla_core::*;
pub use nabla_derive::Tree;
/// Training pieces: layers, initialisers, metrics, optimizers, schedules, data, checkpoints.
pub use nabla_nn as nn;
