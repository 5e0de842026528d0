//! Trains a small convolutional network on the embedded digits (8x8 images): two 3x3
//! convolutions with ReLU and 2x2 max pooling, then a linear classifier; Adam. Prints the
//! held-out accuracy per epoch. `--batch-norm` puts a batch norm after each convolution, its
//! statistics those of the global batch on every rank (synchronised, through `nb::dist::psum`),
//! so that any number of ranks computes what one process computes.
//!
//! Run: `cargo run --release --example train_cnn` (see `--help`); `--device cuda` in a build
//! with `--features cuda`; data-parallel under `mpirun` (`--features mpi`) or `nabla-launch`,
//! as train_mlp: every rank takes its shard of each global batch and the gradients are averaged.

use std::time::Instant;

use clap::Parser;

#[path = "../device/mod.rs"]
mod device;
use device::open_device;
use indicatif::{ProgressBar, ProgressStyle};
use nabla as nb;
use nb::nn::data::Dataset;
use nb::nn::{Adam, BatchNorm, BatchStats, Conv2d, Init, Linear, Optimizer, accuracy, digest};
use nb::{Conv2dOptions, DType, Device, Rng, Tensor};

/// Train a CNN on the digits set with nabla-rs.
#[derive(Parser, Debug)]
struct Args {
    /// Passes over the training set.
    #[arg(long, default_value_t = 30)]
    epochs: u64,
    /// Examples per step (the global batch, over all ranks).
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Seed for initialisation, the split and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// `cpu`, or `cuda` (the GPU numbered LOCAL_RANK; a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// A batch norm after each convolution, with statistics synchronised over the ranks.
    #[arg(long)]
    batch_norm: bool,
    /// Print one final JSON line with the results.
    #[arg(long)]
    json: bool,
    /// No progress bar and no per-epoch lines.
    #[arg(long)]
    quiet: bool,
}

/// The network: 1 -> 16 -> 32 channels, each a padded 3x3 convolution (with `--batch-norm`
/// a batch norm after it), ReLU and 2x2 max pool (8x8 -> 4x4 -> 2x2), then 128 -> 10.
#[derive(Clone, Debug, nb::Tree)]
struct Cnn {
    convs: Vec<Conv2d>,
    /// One per convolution with `--batch-norm`, else none.
    norms: Vec<BatchNorm>,
    head: Linear,
}

/// How the batch norms normalise.
#[derive(Clone, Copy)]
enum Norm<'a> {
    /// With the global batch's statistics (`Some(sum)` adds a tensor over the ranks; `None`,
    /// one process, normalises with its own batch); the new running statistics come back from
    /// `forward`.
    Train(&'a [BatchStats], Option<&'a nb::CrossRankSum>),
    /// With the running statistics.
    Eval(&'a [BatchStats]),
}

impl Cnn {
    /// The network and its batch norms' running statistics (none without `batch_norm`).
    fn new(rng: &mut Rng, batch_norm: bool) -> (Cnn, Vec<BatchStats>) {
        let same = Conv2dOptions {
            padding: (1, 1),
            ..Conv2dOptions::default()
        };
        let channels = [16, 32];
        let (norms, stats) = if batch_norm {
            channels.iter().map(|&c| BatchNorm::new(c, DType::F32)).unzip()
        } else {
            (Vec::new(), Vec::new())
        };
        let cnn = Cnn {
            convs: vec![
                Conv2d::new(1, channels[0], (3, 3), same, rng, DType::F32),
                Conv2d::new(channels[0], channels[1], (3, 3), same, rng, DType::F32),
            ],
            norms,
            head: Linear::new(32 * 2 * 2, 10, Init::GlorotUniform, rng, DType::F32),
        };
        (cnn, stats)
    }

    /// Logits for `x: [n, 64]` (flattened 8x8 images), and the batch norms' new running
    /// statistics when training.
    fn forward(&self, x: &Tensor, norm: Norm) -> (Tensor, Vec<BatchStats>) {
        let n = x.shape()[0];
        let mut h = x.reshape([n, 1, 8, 8]);
        let mut new_stats = Vec::new();
        for (i, conv) in self.convs.iter().enumerate() {
            h = conv.forward(&h);
            if let Some(bn) = self.norms.get(i) {
                h = match norm {
                    Norm::Train(stats, sum) => {
                        let (y, new) = match sum {
                            Some(sum) => bn.forward_train_synced(&h, &stats[i], sum),
                            None => bn.forward_train(&h, &stats[i]),
                        };
                        new_stats.push(new);
                        y
                    }
                    Norm::Eval(stats) => bn.forward_eval(&h, &stats[i]),
                };
            }
            h = nb::max_pool2d(&h.relu(), (2, 2), (2, 2), (0, 0));
        }
        (self.head.forward(&h.reshape([n, 32 * 2 * 2])), new_stats)
    }

    /// Logits for evaluation.
    fn predict(&self, x: &Tensor, stats: &[BatchStats]) -> Tensor {
        self.forward(x, Norm::Eval(stats)).0
    }
}

fn main() {
    let args = Args::parse();
    let group = nb::dist::init().unwrap_or_else(|e| {
        eprintln!("train_cnn: {e}");
        std::process::exit(2);
    });
    let device = open_device(&args.device).unwrap_or_else(|e| {
        eprintln!("train_cnn: {e}");
        std::process::exit(2);
    });
    let group = device::with_device_transport(group.clone(), device).unwrap_or_else(|e| {
        eprintln!("train_cnn: rank {} of {}: {e}", group.rank(), group.world_size());
        std::process::exit(2);
    });
    if let Err(e) = run(&args, &group, device) {
        eprintln!("train_cnn: rank {} of {}: {e}", group.rank(), group.world_size());
        if group.world_size() > 1 {
            group.abort(1);
        }
        std::process::exit(1);
    }
}

fn run(args: &Args, group: &nb::dist::ProcessGroup, device: Device) -> Result<(), Box<dyn std::error::Error>> {
    let (rank, world) = (group.rank(), group.world_size());
    let (train, test) = Dataset::digits().split(0.2, args.seed);
    if args.batch_size < world {
        return Err(format!(
            "--batch-size {} gives some of the {world} ranks no example",
            args.batch_size
        )
        .into());
    }
    let to_device = |t: &Tensor| t.to_device(device).expect("the device was opened");
    let (model, stats) = Cnn::new(&mut Rng::new(args.seed), args.batch_norm);
    let model = nb::Tree::map_leaves(&model, to_device);
    let mut stats = nb::Tree::map_leaves(&stats, to_device);
    // Every rank starts from rank 0's parameters.
    let model = group.broadcast_tree(&model, 0)?;
    let opt = Optimizer::Adam(Adam::default());
    let mut state = opt.init(&model);
    let mut model = model;
    let (test_x, test_y) = (test.x.to_device(device)?, test.y.to_device(device)?);
    // Each rank differentiates its share of the global batch's mean loss (its shard's mean
    // times `weight`, the shard's part of the batch) and the shares' gradients are summed: the
    // derivative that synchronised batch statistics need (their sum over ranks sends every
    // rank's cotangents back to every rank). `weight` is an input so that a replay takes each
    // batch's own.
    let sum_over_ranks = nb::dist::cross_rank_sum(group);
    let sum = (world > 1).then_some(&sum_over_ranks);
    let vg = |(m, stats, x, y, weight): &(Cnn, Vec<BatchStats>, Tensor, Tensor, Tensor)| {
        nb::value_and_grad_with_aux(|m: &Cnn| {
            let (logits, new_stats) = m.forward(x, Norm::Train(stats, sum));
            (nb::cross_entropy(&logits, y) * weight, new_stats)
        })(m)
    };
    let vg_jit = nb::Jit::new(vg);
    let steps_per_epoch = train.len().div_ceil(args.batch_size) as u64;
    let bar = if args.quiet || args.json || rank != 0 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(args.epochs * steps_per_epoch)
    };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}").expect("valid template"));
    let started = Instant::now();
    let mut last_loss = f64::NAN;
    for epoch in 0..args.epochs {
        for batch in train.batches(args.batch_size, args.seed, epoch) {
            let shard = nb::dist::Shard::of(batch.y.numel(), rank, world);
            let rows = |t: &Tensor| {
                t.slice_axis(
                    0,
                    Some(shard.range().start as isize),
                    Some(shard.range().end as isize),
                    1,
                )
            };
            let (x, y) = (rows(&batch.x).to_device(device)?, rows(&batch.y).to_device(device)?);
            let weight = Tensor::full_on(&[], shard.weight(), DType::F32, device);
            let ((loss, new_stats), grads) = vg_jit.call(&(model.clone(), stats.clone(), x, y, weight));
            stats = new_stats;
            // One rank: this returns the loss and gradients as they are.
            let (loss, grads) = nb::dist::all_reduce_weighted(group, &(loss, grads), 1.0)?;
            last_loss = loss.item::<f32>() as f64;
            if !last_loss.is_finite() {
                return Err(format!(
                    "training diverged: the loss became {last_loss} in epoch {}; try a smaller --lr",
                    epoch + 1
                )
                .into());
            }
            (model, state) = opt.update(&model, &grads, &state, args.lr);
            bar.set_message(format!("loss {last_loss:.4}"));
            bar.inc(1);
        }
        if !args.quiet && !args.json && rank == 0 {
            let acc = accuracy(&model.predict(&test_x, &stats), &test_y);
            bar.suspend(|| {
                println!(
                    "epoch {:>3}: loss {last_loss:.4}, test accuracy {:.2} %",
                    epoch + 1,
                    100.0 * acc
                )
            });
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let test_accuracy = accuracy(&model.predict(&test_x, &stats), &test_y);
    let checksum = digest::digest_hex(&[nb::Tree::leaves(&model), nb::Tree::leaves(&stats)].concat());
    if args.json {
        println!(
            "{}",
            serde_json::json!({"test_accuracy": test_accuracy, "final_loss": last_loss, "seconds": seconds,
                "param_checksum": checksum, "rank": rank, "world_size": world})
        );
    } else if rank == 0 {
        println!(
            "done: {} epochs in {seconds:.2} s, test accuracy {:.2} %, param checksum {checksum}",
            args.epochs,
            100.0 * test_accuracy
        );
    }
    Ok(())
}
