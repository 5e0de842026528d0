//! nabla-nn: the pieces of a training loop on top of nabla's transforms: layers as plain
//! pytrees, seeded initialisers, losses and metrics, optimizers over any pytree, learning-rate
//! schedules, gradient clipping, batch normalisation, data loading (the embedded digits set, MNIST IDX files), and checkpoints.

pub mod batch_norm;
pub mod checkpoint;
pub mod clip;
pub mod data;
pub mod digest;
pub mod init;
pub mod layers;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod transformer;

pub use batch_norm::{BatchNorm, BatchStats};
pub use clip::clip_by_global_norm;
pub use init::Init;
pub use layers::{Activation, Linear, Mlp};
pub use metrics::accuracy;
pub use optim::{Adam, OptState, Optimizer, Sgd};
pub use schedule::Schedule;
pub use transformer::{Conv2d, Dropout, Embedding, LayerNorm, MultiHeadAttention, TransformerBlock};
