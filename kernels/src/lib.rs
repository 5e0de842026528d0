//! The CUDA C source of nabla-rs's device kernels, generated per operation and dtype, for the
//! CUDA backend to compile at run time with NVRTC. No CUDA is needed to build or test this
//! crate; `ci/check_kernels` compiles the whole [`catalogue`] for sm_90 with NVRTC.
//!
//! # How the backend uses it
//!
//! 1. Build a spec for the operation, e.g.
//!    `KernelSpec::from(UnarySpec::new(UnaryOp::Exp, KernelDType::F32, Variant::Contiguous)?)`.
//!    Constructors refuse combinations that have no kernel ([`KernelError::Unsupported`]), so the
//!    backend can turn them into "not supported on this device" errors.
//! 2. Compile [`KernelSpec::source`] with NVRTC (options `--gpu-architecture=sm_XX
//!    -default-device --std=c++17`, plus `-I` a CUDA include directory when
//!    [`KernelSpec::headers`] is not empty), cache the module by source and architecture, and
//!    load the function [`KernelSpec::entry_name`] (an `extern "C"` name, so no lowered-name
//!    lookup is needed).
//! 3. Launch it with the arguments [`KernelSpec::params`] lists, in order: device pointers
//!    (advanced by the views' offsets for `_contig` variants), [`KernelLayout`]s by value (a
//!    `#[repr(transparent)]` newtype implementing cudarc's `DeviceRepr`), `i64`/`i32`/`f64`
//!    scalars, and the device error record. Grid and block sizes come from [`launch`].
//! 4. Where the host synchronises, read the error record ([`ERROR_RECORD_WORDS`] `u64`s) and
//!    turn a non-zero code into an error with [`DeviceError::decode`], then clear it.
//!
//! # Conventions
//!
//! - Strided inputs use [`KernelLayout`] (shape and strides in elements, up to [`MAX_DIMS`]
//!   axes after simplification); element `i` of a view, counted row-major, is at
//!   [`KernelLayout::offset_of`]`(i)`. Outputs are contiguous unless an argument says
//!   otherwise.
//! - Loops are grid-stride over 64-bit indices; blocks are [`launch::BLOCK`] threads.
//! - f16 and bf16 compute in float; reductions of f32 accumulate in float, of f64 in double.
//! - Semantics follow the CPU backend (`nabla_core::backend::cpu`): NaN propagation in max/min,
//!   floor division for integers, wrapping integer arithmetic, saturating float-to-integer
//!   casts, the first index at ties in arg-max/min.

mod codegen;
mod dtype;
mod error;
pub mod launch;
mod layout;
mod ops;
mod params;
mod spec;

pub use codegen::attention::{
    AttentionPass, AttentionSpec, AttentionTuning, HEAD_CLASSES as ATTENTION_HEAD_CLASSES,
    MAX_HEAD as ATTENTION_MAX_HEAD, THREADS as ATTENTION_THREADS,
};
pub use codegen::channels::{ChannelPass, ChannelSpec};
pub use codegen::elementwise::{
    ArangeSpec, BinarySpec, CastSpec, CompareSpec, CopySpec, FillSpec, SelectSpec, UnarySpec,
};
pub use codegen::fused::{AdamSpec, CrossEntropySpec, RowSpec, SgdSpec};
pub use codegen::index::{ConcatSpec, EmbedSpec, GatherSpec, IndexCheckSpec, ScatterAddSpec};
pub use codegen::pool::{PoolOp, PoolSpec};
pub use codegen::random::RandomUniformSpec;
pub use codegen::reduce::{ArgReduceSpec, ReduceSpec, ReduceStage};
pub use codegen::window::{FoldSpec, UnfoldSpec};
pub use dtype::KernelDType;
pub use error::{DeviceError, DeviceErrorKind, ERROR_RECORD_WORDS, KernelError};
pub use layout::{ConcatSlot, KernelLayout, MAX_DIMS, ReduceLayouts, contiguous_strides};
pub use ops::{ArgOp, BinaryOp, ChannelOp, CmpOp, ReduceOp, RowOp, UnaryOp};
pub use params::{AccType, ArgType, Param};
pub use spec::{KernelSpec, Variant, catalogue};
