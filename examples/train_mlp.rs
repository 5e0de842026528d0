//! Trains an MLP classifier on the embedded digits set (or MNIST IDX files with `--data`),
//! with a progress bar, per-epoch train loss and held-out accuracy, checkpoints and resume.
//!
//! Run: `cargo run --release --example train_mlp` (see `--help`).

use std::path::PathBuf;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use nabla as nb;
use nb::nn::checkpoint::{self, Checkpoint};
use nb::nn::data::Dataset;
use nb::nn::{accuracy, digest, Activation, Adam, Mlp, Optimizer, Sgd};
use nb::{DType, Rng, Tensor, Tree};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OptimizerName {
    Sgd,
    Momentum,
    Nesterov,
    Adam,
    Adamw,
}

/// Train an MLP on the digits set (or MNIST) with nabla-rs.
#[derive(Parser, Debug)]
struct Args {
    /// Passes over the training set.
    #[arg(long, default_value_t = 20)]
    epochs: u64,
    /// Examples per step.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerName::Adam)]
    optimizer: OptimizerName,
    /// Seed for initialisation, the split and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Hidden layer widths, comma separated.
    #[arg(long, default_value = "128", value_delimiter = ',')]
    hidden: Vec<usize>,
    /// Directory with MNIST IDX files (train-images-idx3-ubyte, ...) instead of the digits set.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write a checkpoint here after every epoch (atomically).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue from the checkpoint given with --checkpoint.
    #[arg(long)]
    resume: bool,
    /// Print one final JSON line with the results.
    #[arg(long)]
    json: bool,
    /// Stop after this many steps in total (for tests of resuming).
    #[arg(long)]
    max_steps: Option<u64>,
    /// Run the gradient computation eagerly instead of replaying it with `nb::jit` (same
    /// results, bit for bit; slower).
    #[arg(long)]
    no_jit: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn optimizer(name: OptimizerName) -> Optimizer {
    let sgd = |momentum: f64, nesterov: bool| {
        Optimizer::Sgd(Sgd {
            momentum,
            nesterov,
            weight_decay: 0.0,
        })
    };
    match name {
        OptimizerName::Sgd => sgd(0.0, false),
        OptimizerName::Momentum => sgd(0.9, false),
        OptimizerName::Nesterov => sgd(0.9, true),
        OptimizerName::Adam => Optimizer::Adam(Adam::default()),
        OptimizerName::Adamw => Optimizer::Adam(Adam {
            weight_decay: 1e-4,
            decoupled_weight_decay: true,
            ..Adam::default()
        }),
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("train_mlp: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let (train, test) = match &args.data {
        Some(dir) => Dataset::mnist(dir)?,
        None => Dataset::digits().split(0.2, args.seed),
    };
    let classes = 1 + train.y.max(nb::Axes::All, false).item::<i64>() as usize;
    let features = train.x.shape()[1];
    let mut widths = vec![features];
    widths.extend(&args.hidden);
    widths.push(classes);
    let mut rng = Rng::new(args.seed);
    let mut model = Mlp::new(&widths, &[Activation::Relu], &mut rng, DType::F32);
    let opt = optimizer(args.optimizer);
    let mut state = opt.init(&model);
    let mut step = 0u64;

    if args.resume {
        let path = args.checkpoint.as_ref().ok_or("--resume needs --checkpoint <path>")?;
        let ckpt = checkpoint::load(path)?;
        let (p, s) = (model.leaves().len(), state.leaves().len());
        if ckpt.params.len() != p || ckpt.optimizer_state.len() != s {
            return Err(format!(
                "{}: holds {} parameter and {} optimizer tensors, this model needs {p} and {s} (same --hidden and --optimizer?)",
                path.display(),
                ckpt.params.len(),
                ckpt.optimizer_state.len()
            )
            .into());
        }
        model = model.rebuild(ckpt.params);
        state = state.rebuild(ckpt.optimizer_state).with_count(ckpt.step);
        step = ckpt.step;
        rng = Rng::from_state(ckpt.rng_state.0, ckpt.rng_state.1);
    }

    let batches_per_epoch = train.len().div_ceil(args.batch_size) as u64;
    let total_steps = (args.epochs * batches_per_epoch).min(args.max_steps.unwrap_or(u64::MAX));
    let bar = if args.quiet || args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_steps)
    };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}").expect("valid template"));
    bar.set_position(step);
    // The loss and gradients of a batch; the batch is an argument, so one recorded program
    // serves every batch of a size. The optimizer update stays eager: it uses Rust numbers
    // (step count, learning rate) that a recording would fix.
    let value_and_grad =
        |(m, x, y): &(Mlp, Tensor, Tensor)| nb::value_and_grad(|m: &Mlp| nb::cross_entropy(&m.forward(x), y))(m);
    let value_and_grad_jit = nb::Jit::new(value_and_grad);
    let started = Instant::now();
    let mut last_loss = f64::NAN;
    let mut seen = 0usize;
    while step < total_steps {
        let epoch = step / batches_per_epoch;
        let batches = train.batches(args.batch_size, args.seed, epoch);
        let mut epoch_loss = 0.0;
        let mut epoch_count = 0;
        for batch in batches.iter().skip((step % batches_per_epoch) as usize) {
            if step >= total_steps {
                break;
            }
            let inputs = (model, batch.x.clone(), batch.y.clone());
            let (loss, grads) = if args.no_jit {
                value_and_grad(&inputs)
            } else {
                value_and_grad_jit.call(&inputs)
            };
            let (new_model, new_state) = opt.update(&inputs.0, &grads, &state, args.lr);
            model = new_model;
            state = new_state;
            step += 1;
            last_loss = loss.item::<f32>() as f64;
            epoch_loss += last_loss;
            epoch_count += 1;
            seen += batch.y.numel();
            let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {last_loss:.4}  {rate:.0} examples/s"));
            bar.inc(1);
        }
        let test_acc = accuracy(&model.forward(&test.x), &test.y);
        bar.suspend(|| {
            if !args.json {
                println!(
                    "epoch {:>3}: train loss {:.4}, test accuracy {:.2} %",
                    epoch + 1,
                    epoch_loss / epoch_count.max(1) as f64,
                    100.0 * test_acc
                );
            }
        });
        if let Some(path) = &args.checkpoint {
            let ckpt = Checkpoint {
                step,
                rng_state: rng.state(),
                params: model.leaves(),
                optimizer_state: state.leaves(),
                metadata: [
                    ("widths".to_string(), format!("{widths:?}")),
                    ("optimizer".to_string(), format!("{:?}", args.optimizer)),
                ]
                .into_iter()
                .collect(),
            };
            checkpoint::save(path, &ckpt)?;
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let test_accuracy = accuracy(&model.forward(&test.x), &test.y);
    let checksum = digest::digest_hex(&model.leaves());
    if args.json {
        let line = serde_json::json!({
            "test_accuracy": test_accuracy,
            "final_loss": last_loss,
            "steps": step,
            "seconds": seconds,
            "param_checksum": checksum,
            "rank": 0,
            "world_size": 1,
        });
        println!("{line}");
    } else {
        println!(
            "done: {step} steps in {seconds:.2} s, test accuracy {:.2} %, param checksum {checksum}",
            100.0 * test_accuracy
        );
    }
    Ok(())
}
