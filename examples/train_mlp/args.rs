//! The command-line flags of `train_mlp` and the range of each. A value out of range is a
//! parse error: clap prints the flag, the value and the accepted range, and exits with status 2
//! before anything else runs (on every rank alike under `mpirun`, before any collective).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// How gradients are computed and synchronised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Api {
    /// `nb::value_and_grad` (replayed with `nb::jit`), then `nb::dist::all_reduce_weighted`.
    Functional,
    /// PyTorch style: `requires_grad` leaves from `nb::dist::DataParallel`, `loss.backward()`,
    /// gradients all-reduced during the backward sweep.
    Backward,
}

/// Where tensors live and ops run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceName {
    /// The CPU backend.
    Cpu,
    /// The GPU numbered LOCAL_RANK (0 without a launcher), through the CUDA backend (a build
    /// with `--features cuda`).
    Cuda,
}

/// The optimizer to train with.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OptimizerName {
    /// Plain SGD.
    Sgd,
    /// SGD with momentum 0.9.
    Momentum,
    /// SGD with Nesterov momentum 0.9.
    Nesterov,
    /// Adam.
    Adam,
    /// Adam with decoupled weight decay 1e-4.
    Adamw,
}

/// Train an MLP on the digits set (or MNIST) with nabla-rs.
#[derive(Parser, Debug)]
pub struct Args {
    /// Passes over the training set (at least 1).
    #[arg(long, default_value_t = 20, value_parser = whole_number_at_least_one::<u64>)]
    pub epochs: u64,
    /// Examples per step (the global batch, over all ranks; at least 1, and at least the number
    /// of ranks).
    #[arg(long, default_value_t = 32, value_parser = whole_number_at_least_one::<usize>)]
    pub batch_size: usize,
    /// Learning rate (a finite number greater than 0).
    #[arg(long, default_value_t = 3e-3, allow_negative_numbers = true, value_parser = learning_rate)]
    pub lr: f64,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerName::Adam)]
    pub optimizer: OptimizerName,
    /// Seed for initialisation, the split and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Hidden layer widths, comma separated (each at least 1).
    #[arg(long, default_value = "128", value_delimiter = ',', value_parser = whole_number_at_least_one::<usize>)]
    pub hidden: Vec<usize>,
    /// Directory with MNIST IDX files (train-images-idx3-ubyte, ...) instead of the digits set.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Write a checkpoint here after every epoch (atomically); its directory must exist and be
    /// writable.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint given with --checkpoint.
    #[arg(long, requires = "checkpoint")]
    pub resume: bool,
    /// Like --resume, but start from the beginning while the checkpoint file does not exist yet:
    /// for jobs that a launcher restarts after a failure (`nabla-launch --max-restarts K`). Every
    /// rank reads the checkpoint, so on several nodes it must be on a shared file system.
    #[arg(long, requires = "checkpoint", conflicts_with = "resume")]
    pub resume_if_present: bool,
    /// Fault injection for tests of restarts: on the first attempt (NABLA_RESTART_COUNT unset
    /// or 0) the last rank exits with status 3 just before this step.
    #[arg(long, value_parser = whole_number_at_least_one::<u64>)]
    pub fail_at_step: Option<u64>,
    /// Print one final JSON line with the results.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many steps in total (for tests of resuming; at least 1).
    #[arg(long, value_parser = whole_number_at_least_one::<u64>)]
    pub max_steps: Option<u64>,
    /// Run the gradient computation eagerly instead of replaying it with `nb::jit` (same
    /// results, bit for bit; slower).
    #[arg(long)]
    pub no_jit: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Gradient API: functional (value_and_grad, jit) or backward (DataParallel, loss.backward()).
    #[arg(long, value_enum, default_value_t = Api::Functional)]
    pub api: Api,
    /// Print the global mean loss of every step (rank 0), for comparing runs.
    #[arg(long)]
    pub print_losses: bool,
    /// Device to train on: the data stays on the host and each batch is copied over.
    #[arg(long, value_enum, default_value_t = DeviceName::Cpu)]
    pub device: DeviceName,
}

/// Parses a whole number of at least 1 (clap adds the flag and the value to the message).
fn whole_number_at_least_one<T: std::str::FromStr + PartialEq + From<u8>>(s: &str) -> Result<T, String> {
    match s.trim().parse::<T>() {
        Ok(n) if n != T::from(0) => Ok(n),
        _ => Err("expected a whole number of at least 1".to_string()),
    }
}

/// Parses a learning rate: a finite number greater than 0 (NaN, infinities, zero and negative
/// rates would train to a NaN or a useless model without saying so).
fn learning_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(lr) if lr.is_finite() && lr > 0.0 => Ok(lr),
        _ => Err("expected a finite number greater than 0, such as 0.003".to_string()),
    }
}
