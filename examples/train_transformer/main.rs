//! Trains a small decoder-only transformer to sort sequences of digits: the input is
//! `x_1 .. x_n SEP`, and the model writes the sorted digits one at a time (teacher forcing in
//! training, greedy decoding in evaluation). Reports the exact-match accuracy (every digit of
//! the sorted sequence right) on held-out sequences, with a progress bar and checkpoints.
//!
//! Run: `cargo run --release --example train_transformer` (see `--help`); `--device cuda` in a
//! build with `--features cuda`; data-parallel under `mpirun` or `nabla-launch` as train_mlp.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

#[path = "../device/mod.rs"]
mod device;
use device::open_device;
use indicatif::{ProgressBar, ProgressStyle};
use nabla as nb;
use nb::nn::checkpoint::{self, Checkpoint};
use nb::nn::{Adam, Embedding, Init, LayerNorm, Linear, Optimizer, Schedule, TransformerBlock, digest};
use nb::{DType, Device, Rng, Tensor, Tree};

/// Train a decoder-only transformer to sort digit sequences.
#[derive(Parser, Debug)]
struct Args {
    /// Optimizer steps.
    #[arg(long, default_value_t = 600)]
    steps: u64,
    /// Digits per sequence.
    #[arg(long, default_value_t = 8)]
    length: usize,
    /// Sequences per step (global batch over all ranks).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Model width.
    #[arg(long, default_value_t = 64)]
    width: usize,
    /// Transformer blocks.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Dropout on the residual branches.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Adam's peak learning rate (warm-up over 5 % of the steps, then cosine decay to 1 %).
    #[arg(long, default_value_t = 3e-3)]
    lr: f64,
    /// Seed for initialisation and data.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out sequences for the final exact-match accuracy.
    #[arg(long, default_value_t = 1000)]
    test_size: usize,
    /// Stop after this many steps in all (the schedule still spans --steps), writing the
    /// checkpoint: for tests of resuming.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Write a checkpoint here every 500 steps and at the end (atomically).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Continue from --checkpoint when the file exists.
    #[arg(long, requires = "checkpoint")]
    resume: bool,
    /// `cpu`, or `cuda` (the GPU numbered LOCAL_RANK; a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Print one final JSON line with the results.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

const DIGITS: usize = 10;
const SEP: i64 = 10;

/// Token and position embeddings, the blocks, a final norm and the head over the digits.
#[derive(Clone, Debug, nb::Tree)]
struct Model {
    tokens: Embedding,
    positions: Embedding,
    blocks: Vec<TransformerBlock>,
    norm: LayerNorm,
    head: Linear,
}

impl Model {
    fn new(a: &Args, rng: &mut Rng) -> Model {
        let d = a.width;
        let scaled = |e: Embedding| Embedding { table: e.table * 0.1 };
        Model {
            tokens: scaled(Embedding::new(DIGITS + 1, d, rng, DType::F32)),
            positions: scaled(Embedding::new(2 * a.length + 1, d, rng, DType::F32)),
            blocks: (0..a.layers)
                .map(|_| TransformerBlock::new(d, a.heads, a.dropout, rng, DType::F32))
                .collect(),
            norm: LayerNorm::new(d, DType::F32),
            head: Linear::new(d, DIGITS, Init::GlorotUniform, rng, DType::F32),
        }
    }

    /// Logits `[batch, seq, DIGITS]` for token ids `[batch, seq]`; `key` turns dropout on.
    fn forward(&self, ids: &Tensor, key: Option<&Tensor>) -> Tensor {
        let seq = ids.shape()[1];
        let pos = Tensor::from_vec((0..seq as i64).collect(), &[seq])
            .to_device(ids.device())
            .expect("device");
        let mut h = self.tokens.forward(ids) + self.positions.forward(&pos);
        for (i, block) in self.blocks.iter().enumerate() {
            let k = key.map(|k| nb::random::fold_in(k, i as u64));
            h = block.forward(&h, true, k.as_ref());
        }
        self.head.forward(&self.norm.forward(&h))
    }
}

/// `count` random sequences: the model input `[count, 2n]` (`x, SEP, sorted[..n-1]`) and the
/// targets `[count, n]` (the sorted digits, predicted from positions `n..2n`).
fn make_batch(rng: &mut Rng, count: usize, n: usize) -> (Tensor, Tensor) {
    let u = rng.uniform(&[count, n], 0.0, DIGITS as f64, DType::F64).to_vec::<f64>();
    let mut ids: Vec<i64> = Vec::with_capacity(count * 2 * n);
    let mut targets: Vec<i64> = Vec::with_capacity(count * n);
    for row in u.chunks(n) {
        let xs: Vec<i64> = row.iter().map(|&v| v as i64).collect();
        let mut sorted = xs.clone();
        sorted.sort();
        ids.extend(&xs);
        ids.push(SEP);
        ids.extend(&sorted[..n - 1]);
        targets.extend(&sorted);
    }
    (
        Tensor::from_vec(ids, &[count, 2 * n]),
        Tensor::from_vec(targets, &[count, n]),
    )
}

/// The logits at the positions that predict the sorted digits (`n - 1 ..= 2n - 2`... i.e.
/// from SEP on).
fn answer_logits(logits: &Tensor, n: usize) -> Tensor {
    logits.slice_axis(1, Some(n as isize), Some(2 * n as isize), 1)
}

fn loss(model: &Model, ids: &Tensor, targets: &Tensor, n: usize, key: Option<&Tensor>) -> Tensor {
    let logits = answer_logits(&model.forward(ids, key), n);
    let b = targets.shape()[0];
    nb::cross_entropy(&logits.reshape([b * n, DIGITS]), &targets.reshape([b * n]))
}

/// Exact-match accuracy with greedy decoding: the model writes each sorted digit after seeing
/// its own previous ones.
fn exact_match(model: &Model, inputs: &Tensor, targets: &Tensor, n: usize, device: Device) -> f64 {
    let b = inputs.shape()[0];
    let prompt = inputs.slice_axis(1, Some(0), Some(n as isize + 1), 1).to_vec::<i64>();
    let mut seqs: Vec<Vec<i64>> = prompt.chunks(n + 1).map(|c| c.to_vec()).collect();
    for step in 0..n {
        let len = n + 1 + step;
        let flat: Vec<i64> = seqs.iter().flat_map(|s| s.iter().copied()).collect();
        let ids = Tensor::from_vec(flat, &[b, len]).to_device(device).expect("device");
        let next = model
            .forward(&ids, None)
            .index_axis(1, len as isize - 1)
            .argmax(Some(-1), false)
            .to_vec::<i64>();
        for (s, t) in seqs.iter_mut().zip(next) {
            s.push(t);
        }
    }
    let want = targets.to_vec::<i64>();
    let right = seqs
        .iter()
        .zip(want.chunks(n))
        .filter(|(s, w)| &s[n + 1..] == *w)
        .count();
    right as f64 / b as f64
}

fn main() {
    let args = Args::parse();
    let group = nb::dist::init().unwrap_or_else(|e| {
        eprintln!("train_transformer: {e}");
        std::process::exit(2);
    });
    let checks = || -> Result<Device, String> {
        if args.length < 2 {
            return Err(format!("--length {}: needs at least 2 digits", args.length));
        }
        if args.heads == 0 || !args.width.is_multiple_of(args.heads) {
            return Err(format!(
                "--width {} is not divisible by --heads {}",
                args.width, args.heads
            ));
        }
        if !(0.0..1.0).contains(&args.dropout) {
            return Err(format!("--dropout {}: must be in [0, 1)", args.dropout));
        }
        if args.batch_size < group.world_size() {
            return Err(format!(
                "--batch-size {} gives some of the {} ranks no sequence",
                args.batch_size,
                group.world_size()
            ));
        }
        open_device(&args.device)
    };
    let device = checks().unwrap_or_else(|e| {
        eprintln!("train_transformer: {e}");
        std::process::exit(2);
    });
    let group = device::with_device_transport(group.clone(), device).unwrap_or_else(|e| {
        eprintln!(
            "train_transformer: rank {} of {}: {e}",
            group.rank(),
            group.world_size()
        );
        std::process::exit(2);
    });
    if let Err(e) = run(&args, &group, device) {
        eprintln!(
            "train_transformer: rank {} of {}: {e}",
            group.rank(),
            group.world_size()
        );
        if group.world_size() > 1 {
            group.abort(1);
        }
        std::process::exit(1);
    }
}

fn run(args: &Args, group: &nb::dist::ProcessGroup, device: Device) -> Result<(), Box<dyn std::error::Error>> {
    let (rank, world) = (group.rank(), group.world_size());
    let n = args.length;
    let mut init_rng = Rng::new(args.seed);
    let mut model = Model::new(args, &mut init_rng);
    let opt = Optimizer::Adam(Adam::default());
    let mut state = opt.init(&model);
    let mut step = 0u64;
    if let (true, Some(path)) = (args.resume, &args.checkpoint)
        && path.exists()
    {
        let ckpt = checkpoint::load(path)?;
        model = model.rebuild(ckpt.params);
        state = state
            .restored(ckpt.optimizer_state, ckpt.step)
            .map_err(|e| format!("--resume: {e} (same model flags?)"))?;
        step = ckpt.step;
    }
    let to_device = |t: &Tensor| t.to_device(device).expect("the device was opened");
    let mut model = group.broadcast_tree(&model.map_leaves(to_device), 0)?;
    state = state.map_leaves(to_device);
    let vg = |(m, ids, y, key): &(Model, Tensor, Tensor, Tensor)| {
        nb::value_and_grad(|m: &Model| loss(m, ids, y, n, (args.dropout > 0.0).then_some(key)))(m)
    };
    let vg_jit = nb::Jit::new(vg);
    let stop = args.steps.min(args.max_steps.unwrap_or(u64::MAX));
    let bar = if args.quiet || args.json || rank != 0 {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(stop)
    };
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}").expect("valid template"));
    bar.set_position(step);
    let schedule = Schedule::Cosine {
        lr: args.lr,
        warmup: args.steps / 20,
        total: args.steps,
        min_lr: args.lr / 100.0,
    };
    let started = Instant::now();
    let mut last_loss = f64::NAN;
    let save = |model: &Model, state: &nb::nn::OptState<Model>, step: u64| -> Result<(), Box<dyn std::error::Error>> {
        if let (Some(path), 0) = (&args.checkpoint, rank) {
            let ckpt = Checkpoint {
                step,
                rng_state: (args.seed, step),
                params: model.leaves(),
                optimizer_state: state.leaves(),
                metadata: [("task".to_string(), format!("sort {n} digits"))].into_iter().collect(),
            };
            checkpoint::save(path, &ckpt)?;
        }
        Ok(())
    };
    while step < stop {
        // Every rank draws the same global batch (seeded by the step) and takes its shard.
        let mut data_rng = Rng::from_state(args.seed ^ 0xDA7A, step);
        let (ids, y) = make_batch(&mut data_rng, args.batch_size, n);
        let shard = nb::dist::Shard::of(args.batch_size, rank, world);
        let rows = |t: &Tensor| {
            t.slice_axis(
                0,
                Some(shard.range().start as isize),
                Some(shard.range().end as isize),
                1,
            )
        };
        let key = nb::random::key(&[args.seed, step, rank as u64]);
        let inputs = (
            model.clone(),
            rows(&ids).to_device(device)?,
            rows(&y).to_device(device)?,
            key,
        );
        let local = vg_jit.call(&inputs);
        // One rank: the shard weighs 1 and this returns `local` as it is.
        let (l, grads) = nb::dist::all_reduce_weighted(group, &local, shard.weight())?;
        last_loss = l.item::<f32>() as f64;
        if !last_loss.is_finite() {
            return Err(format!(
                "training diverged at step {}: the loss is {last_loss}; try a smaller --lr",
                step + 1
            )
            .into());
        }
        (model, state) = opt.update(&model, &grads, &state, schedule.at(step));
        step += 1;
        bar.set_message(format!("loss {last_loss:.4}"));
        bar.inc(1);
        if step.is_multiple_of(500) {
            save(&model, &state, step)?;
        }
    }
    bar.finish_and_clear();
    save(&model, &state, step)?;
    let seconds = started.elapsed().as_secs_f64();
    let mut test_rng = Rng::new(args.seed ^ 0x7E57);
    let (test_ids, test_y) = make_batch(&mut test_rng, args.test_size, n);
    let accuracy = exact_match(&model, &test_ids, &test_y, n, device);
    let checksum = digest::digest_hex(&model.leaves());
    if args.json {
        println!(
            "{}",
            serde_json::json!({"exact_match": accuracy, "final_loss": last_loss, "steps": step, "seconds": seconds,
                "param_checksum": checksum, "rank": rank, "world_size": world})
        );
    } else if rank == 0 {
        println!(
            "done: {step} steps in {seconds:.1} s, loss {last_loss:.4}, held-out exact match {:.2} % (sorting {n} digits), param checksum {checksum}",
            100.0 * accuracy
        );
    }
    Ok(())
}
