//! nabla-nn: the pieces of a training loop on top of nabla's transforms: layers as plain
//! pytrees, seeded initialisers, losses and metrics, optimizers over any pytree, learning-rate
//! schedules, data loading (the embedded digits set, MNIST IDX files), and checkpoints.

pub mod checkpoint;
