//! Trains an MLP classifier on the embedded digits set (or MNIST IDX files with `--data`),
//! with a progress bar, per-epoch train loss and held-out accuracy, checkpoints and resume.
//!
//! Run: `cargo run --release --example train_mlp` (see `--help`).
//!
//! Data-parallel with no code change: build with `--features mpi` and start it with
//! `mpirun -np N target/release/examples/train_mlp`. Every rank trains on its shard of each
//! global batch (`--batch-size` is the global batch) and the gradients are averaged over the
//! ranks, weighted by shard size, so N ranks follow the single-process run.

mod args;
mod checks;
#[path = "../device/mod.rs"]
mod device;

use std::time::Instant;

use args::{Api, Args, DeviceName, OptimizerName};
use checks::SetupError;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use nabla as nb;
use nb::nn::checkpoint::{self, Checkpoint};
use nb::nn::data::Dataset;
use nb::nn::{Activation, Adam, Mlp, OptState, Optimizer, Sgd, accuracy, digest};
use nb::{DType, Device, Rng, Tensor, Tree};

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
    // Flags out of range stop here, in clap, with status 2 (before MPI is initialised).
    let args = Args::parse();
    let group = match nb::dist::init() {
        Ok(g) => g,
        Err(e) => {
            report(format!("train_mlp: {e}"));
            std::process::exit(2);
        }
    };
    let start = match prepare(&args, &group) {
        Ok(start) => start,
        Err(e) => {
            if group.world_size() > 1 {
                report(format!(
                    "train_mlp: rank {} of {}: {}",
                    group.rank(),
                    group.world_size(),
                    e.message
                ));
                if !e.same_on_every_rank {
                    // The other ranks may have found nothing wrong: end them too.
                    group.abort(2);
                }
            } else {
                report(format!("train_mlp: {}", e.message));
            }
            std::process::exit(2);
        }
    };
    // Every rank reached this point with its device open: NCCL for GPU runs on several ranks.
    let group = device::with_device_transport(group.clone(), start.device).unwrap_or_else(|e| {
        report(format!(
            "train_mlp: rank {} of {}: {e}",
            group.rank(),
            group.world_size()
        ));
        std::process::exit(2);
    });
    if let Err(e) = run(&args, &group, start) {
        report(format!(
            "train_mlp: rank {} of {}: {e}",
            group.rank(),
            group.world_size()
        ));
        if group.world_size() > 1 {
            // The other ranks would wait in their next collective: end them all.
            group.abort(1);
        }
        std::process::exit(1);
    }
}

/// The device `--device` names, opened (see `examples/device`).
fn open_device(name: DeviceName) -> Result<Device, String> {
    device::open_device(match name {
        DeviceName::Cpu => "cpu",
        DeviceName::Cuda => "cuda",
    })
}

/// Prints `line` to stderr in one write, so that the lines of ranks sharing a terminal (under
/// `mpirun`) do not interleave.
fn report(line: String) {
    use std::io::Write;
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// Rows `range` of `t` (a view).
fn rows(t: &Tensor, range: std::ops::Range<usize>) -> Tensor {
    t.slice_axis(0, Some(range.start as isize), Some(range.end as isize), 1)
}

/// What training starts from, once every check has passed.
struct Start {
    train: Dataset,
    test: Dataset,
    widths: Vec<usize>,
    device: Device,
    model: Mlp,
    state: OptState<Mlp>,
    step: u64,
    rng: Rng,
}

/// Loads the data and the checkpoint to resume from and checks everything that can be checked
/// before training: the batch size against the data and the ranks, and that checkpoints can be
/// written. Runs no collective.
fn prepare(args: &Args, group: &nb::dist::ProcessGroup) -> Result<Start, SetupError> {
    let world = group.world_size();
    let device = open_device(args.device).map_err(SetupError::on_this_rank)?;
    let (train, test) = match &args.data {
        Some(dir) => {
            Dataset::mnist(dir).map_err(|e| SetupError::on_this_rank(format!("--data {}: {e}", dir.display())))?
        }
        None => Dataset::digits().split(0.2, args.seed),
    };
    checks::check_batches(args.batch_size, train.len(), world).map_err(SetupError::everywhere)?;
    let classes = 1 + train.y.max(nb::Axes::All, false).item::<i64>() as usize;
    let features = train.x.shape()[1];
    let mut widths = vec![features];
    widths.extend(&args.hidden);
    widths.push(classes);
    let mut rng = Rng::new(args.seed);
    let mut model = Mlp::new(&widths, &[Activation::Relu], &mut rng, DType::F32);
    let mut state = optimizer(args.optimizer).init(&model);
    let mut step = 0u64;
    let resume = args.resume || (args.resume_if_present && args.checkpoint.as_ref().is_some_and(|p| p.exists()));
    if let (true, Some(path)) = (resume, &args.checkpoint) {
        let ckpt =
            checkpoint::load(path).map_err(|e| SetupError::on_this_rank(format!("--resume: cannot resume: {e}")))?;
        let p = model.leaves().len();
        let mismatch = |what: String| {
            SetupError::everywhere(format!(
                "--resume: {}: {what} (same --hidden and --optimizer?)",
                path.display()
            ))
        };
        if ckpt.params.len() != p {
            return Err(mismatch(format!(
                "it holds {} parameter tensors, this model needs {p}",
                ckpt.params.len()
            )));
        }
        model = model.rebuild(ckpt.params);
        state = state.restored(ckpt.optimizer_state, ckpt.step).map_err(mismatch)?;
        step = ckpt.step;
        rng = Rng::from_state(ckpt.rng_state.0, ckpt.rng_state.1);
    }
    // Parameters and optimizer state live on the device; checkpoints read them back.
    let to_device = |t: &Tensor| t.to_device(device).expect("the device was opened above");
    let model = model.map_leaves(to_device);
    let state = state.map_leaves(to_device);
    // Only rank 0 writes checkpoints. Checked after resuming, so that a file that cannot be
    // resumed from is reported as such.
    if let (Some(path), true) = (&args.checkpoint, group.is_main()) {
        checks::check_checkpoint_path(path).map_err(SetupError::on_this_rank)?;
    }
    Ok(Start {
        train,
        test,
        widths,
        device,
        model,
        state,
        step,
        rng,
    })
}

fn run(args: &Args, group: &nb::dist::ProcessGroup, start: Start) -> Result<(), Box<dyn std::error::Error>> {
    let (rank, world) = (group.rank(), group.world_size());
    let main_rank = group.is_main();
    let Start {
        train,
        test,
        widths,
        device,
        model,
        mut state,
        mut step,
        rng,
    } = start;
    // Every rank starts from rank 0's parameters (DataParallel broadcasts them).
    let (dp, mut model) = nb::dist::DataParallel::new(group, &model)?;
    let opt = optimizer(args.optimizer);

    let batches_per_epoch = train.len().div_ceil(args.batch_size) as u64;
    let total_steps = (args.epochs * batches_per_epoch).min(args.max_steps.unwrap_or(u64::MAX));
    let bar = if args.quiet || args.json || !main_rank {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total_steps)
    };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}").expect("valid template"));
    bar.set_position(step);
    // The loss and gradients of a batch; the batch is an argument, so one recorded program
    // serves every batch of a size. The optimizer update stays eager: the learning rate is a
    // Rust number (from --lr, possibly scheduled) that a recording would fix.
    let value_and_grad =
        |(m, x, y): &(Mlp, Tensor, Tensor)| nb::value_and_grad(|m: &Mlp| nb::cross_entropy(&m.forward(x), y))(m);
    let value_and_grad_jit = nb::Jit::new(value_and_grad);
    let (test_x, test_y) = (test.x.to_device(device)?, test.y.to_device(device)?);
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
            if args.fail_at_step == Some(step + 1) && rank == world - 1 && first_attempt() {
                eprintln!(
                    "train_mlp: --fail-at-step {}: rank {rank} exits with status 3",
                    step + 1
                );
                std::process::exit(3);
            }
            let shard = nb::dist::Shard::of(batch.y.numel(), rank, world);
            let (x, y) = (rows(&batch.x, shard.range()), rows(&batch.y, shard.range()));
            let (x, y) = (x.to_device(device)?, y.to_device(device)?);
            let (loss, grads) = match args.api {
                Api::Functional => {
                    let inputs = (model.clone(), x, y);
                    let local = if args.no_jit {
                        value_and_grad(&inputs)
                    } else {
                        value_and_grad_jit.call(&inputs)
                    };
                    if world > 1 {
                        // The loss travels in the same buckets as the gradients.
                        nb::dist::all_reduce_weighted(group, &local, shard.weight())?
                    } else {
                        local
                    }
                }
                Api::Backward => {
                    dp.set_shard_sizes(shard.len, shard.global);
                    let tracked = dp.track(&model);
                    let loss = nb::cross_entropy(&tracked.forward(&x), &y);
                    loss.backward();
                    let loss = loss.detach();
                    let loss = if world > 1 {
                        nb::dist::all_reduce_weighted(group, &loss, shard.weight())?
                    } else {
                        loss
                    };
                    (loss, dp.grads(&tracked))
                }
            };
            last_loss = loss.item::<f32>() as f64;
            if !last_loss.is_finite() {
                let what = format!("the loss became {last_loss} at step {} (epoch {})", step + 1, epoch + 1);
                return Err(diverged(args, what).into());
            }
            let (new_model, new_state) = opt.update(&model, &grads, &state, args.lr);
            model = new_model;
            state = new_state;
            step += 1;
            if args.print_losses && main_rank {
                bar.suspend(|| println!("step {step} loss {last_loss:.9}"));
            }
            epoch_loss += last_loss;
            epoch_count += 1;
            seen += shard.global;
            let rate = seen as f64 / started.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {last_loss:.4}  {rate:.0} examples/s"));
            bar.inc(1);
        }
        let test_acc = accuracy(&model.forward(&test_x), &test_y);
        bar.suspend(|| {
            if !args.json && main_rank {
                println!(
                    "epoch {:>3}: train loss {:.4}, test accuracy {:.2} %",
                    epoch + 1,
                    epoch_loss / epoch_count.max(1) as f64,
                    100.0 * test_acc
                );
            }
        });
        if let Some(leaf) = checks::first_non_finite(&model.leaves()) {
            let what = format!("parameter tensor {leaf} holds a NaN or an infinity after step {step}");
            return Err(diverged(args, what).into());
        }
        if let (Some(path), true) = (&args.checkpoint, main_rank) {
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
    let test_accuracy = accuracy(&model.forward(&test_x), &test_y);
    let checksum = digest::digest_hex(&model.leaves());
    if args.json {
        let line = serde_json::json!({
            "test_accuracy": test_accuracy,
            "final_loss": last_loss,
            "steps": step,
            "seconds": seconds,
            "param_checksum": checksum,
            "rank": rank,
            "world_size": world,
            "api": format!("{:?}", args.api).to_lowercase(),
        });
        println!("{line}");
    } else if main_rank {
        println!(
            "done: {step} steps in {seconds:.2} s, test accuracy {:.2} %, param checksum {checksum}",
            100.0 * test_accuracy
        );
    }
    Ok(())
}

/// True unless a launcher says this is a restarted attempt (`NABLA_RESTART_COUNT` above 0).
fn first_attempt() -> bool {
    std::env::var("NABLA_RESTART_COUNT").map_or(true, |v| v.trim() == "0")
}

/// The message for a run whose loss or parameters stopped being finite: what happened, that no
/// checkpoint was written, and what to try.
fn diverged(args: &Args, what: String) -> String {
    let kept = match &args.checkpoint {
        Some(path) => format!("; {} was not overwritten", path.display()),
        None => String::new(),
    };
    format!(
        "training diverged: {what}{kept}. Try a smaller --lr (this run used {:?}), another --optimizer \
         or --seed",
        args.lr
    )
}
