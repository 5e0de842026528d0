//! The CNN and transformer benchmark (issue 12): conv2d forward and forward+backward at a
//! ResNet layer shape (batch 32, 64 -> 64 channels, 56x56, 3x3, padding 1), the same with
//! stride 2 and 128 filters, a 7x7 stride-2 stem over 8 RGB 224x224 images, the max pooling
//! after it (value and gradient, 3x3 stride 2 over `[8, 64, 112, 112]`), attention
//! `[16, 8, 256, 64]` forward and backward (causal, and with a key padding mask), one pre-norm
//! transformer block step, value and gradients (batch 16, sequence 256, width 512, 8 heads,
//! causal), one Adam update of a 16M-element parameter, the value and gradient of the mean
//! cross-entropy of `[2048, 32000]` logits against integer labels (a language model's head),
//! and batch norm over the conv2d input (training, forward and backward; evaluation, forward
//! alone; synchronised, at one rank: ours only);
//! ours next to JAX jit and PyTorch
//! eager (when installed) measured in the same invocation by `ci/jax_layers_baseline.py`.
//! float32 on the CPU.
//!
//! Run: `cargo run --release --example bench_layers -- [--python .venv-jax/bin/python]
//! [--ours-only] [--windows]` (`--windows`: every convolution through im2col, to compare).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use clap::Parser;

#[path = "timing/mod.rs"]
mod timing;
use nabla as nb;
use nb::nn::TransformerBlock;
use nb::{Conv2dOptions, ConvAlgorithm, DType, Rng, Tensor};
use timing::median_ms;

/// Benchmark the layer ops against JAX and PyTorch.
#[derive(Parser, Debug)]
struct Args {
    /// Python with JAX (and optionally PyTorch).
    #[arg(long, default_value = ".venv-jax/bin/python")]
    python: PathBuf,
    /// Timed runs per case (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only our own cases.
    #[arg(long)]
    ours_only: bool,
    /// Compute the convolutions with im2col (`ConvAlgorithm::Windows`) instead of choosing.
    #[arg(long)]
    windows: bool,
}

fn main() {
    let args = Args::parse();
    let mut rows: Vec<(String, String, f64)> = Vec::new();
    let mut rng = Rng::new(0);
    let x = rng.normal(&[32, 64, 56, 56], 0.0, 1.0, DType::F32);
    let w = rng.normal(&[64, 64, 3, 3], 0.0, 0.05, DType::F32);
    let algorithm = if args.windows {
        ConvAlgorithm::Windows
    } else {
        ConvAlgorithm::Auto
    };
    let opts = Conv2dOptions {
        padding: (1, 1),
        algorithm,
        ..Conv2dOptions::default()
    };
    // The convolution cases: the forward, and with `backward` the gradients of x and w too.
    let mut conv = |case: &str, x: &Tensor, w: &Tensor, o: Conv2dOptions, backward: bool| {
        let ours = |case: String, ms| (case, "nabla-rs".to_string(), ms);
        rows.push(ours(
            format!("{case}_fwd"),
            median_ms(1, args.runs, || drop(nb::conv2d(x, w, o))),
        ));
        if backward {
            let fb = nb::grad(|a: &(Tensor, Tensor)| nb::conv2d(&a.0, &a.1, o).square().sum_all());
            let xw = (x.clone(), w.clone());
            rows.push(ours(
                format!("{case}_fwd_bwd"),
                median_ms(1, args.runs, || drop(fb(&xw))),
            ));
        }
    };
    conv("conv2d", &x, &w, opts, true);
    // A ResNet downsampling layer (stride 2, 64 -> 128 channels) and a 7x7 stem (stride 2).
    let w2 = rng.normal(&[128, 64, 3, 3], 0.0, 0.05, DType::F32);
    conv("conv2d_s2", &x, &w2, Conv2dOptions { stride: (2, 2), ..opts }, true);
    let images = rng.normal(&[8, 3, 224, 224], 0.0, 1.0, DType::F32);
    let stem_w = rng.normal(&[64, 3, 7, 7], 0.0, 0.05, DType::F32);
    let stem = Conv2dOptions {
        stride: (2, 2),
        padding: (3, 3),
        algorithm,
        ..Conv2dOptions::default()
    };
    conv("conv2d_stem", &images, &stem_w, stem, false);
    // The max pooling after the stem (3x3, stride 2, padding 1) over the stem's output shape:
    // the value and the gradient of sum(y).
    let pool_in = Rng::new(11).normal(&[8, 64, 112, 112], 0.0, 1.0, DType::F32);
    let pool_grad = nb::grad(|x: &Tensor| nb::max_pool2d(x, (3, 3), (2, 2), (1, 1)).sum_all());
    rows.push((
        "max_pool_fwd_bwd".into(),
        "nabla-rs".into(),
        median_ms(1, args.runs, || drop(pool_grad(&pool_in))),
    ));
    // Average pooling of the same shape: the gradient of sum(y^2) (of sum(y) it would be a
    // constant that a compiler may fold).
    let avg_grad = nb::grad(|x: &Tensor| nb::avg_pool2d(x, (3, 3), (2, 2), (1, 1)).square().sum_all());
    rows.push((
        "avg_pool_fwd_bwd".into(),
        "nabla-rs".into(),
        median_ms(1, args.runs, || drop(avg_grad(&pool_in))),
    ));
    // Attention [16, 8, 256, 64], the gradient of sum(o^2) with respect to q, k and v: causal,
    // and not causal with a key padding mask (sequence b keeps 256 - 8 b keys).
    let qkv: Vec<Tensor> = (0..3)
        .map(|_| rng.normal(&[16, 8, 256, 64], 0.0, 1.0, DType::F32))
        .collect();
    let kept: Vec<bool> = (0..16 * 256).map(|i| i % 256 < 256 - 8 * (i / 256)).collect();
    let padding = Tensor::from_vec(kept, &[16, 1, 1, 256]);
    for (case, mask, causal) in [
        ("attention_causal_fwd_bwd", None, true),
        ("attention_padded_fwd_bwd", Some(&padding), false),
    ] {
        let g = nb::grad(|t: &Vec<Tensor>| {
            nb::scaled_dot_product_attention(&t[0], &t[1], &t[2], mask, causal)
                .square()
                .sum_all()
        });
        rows.push((
            case.into(),
            "nabla-rs".into(),
            median_ms(1, args.runs, || drop(g(&qkv))),
        ));
    }
    // Batch norm in training mode over the conv2d case's activations: the gradient of
    // sum(y^2) with respect to x, the scale and the shift.
    let (bn, bn_stats) = nb::nn::BatchNorm::new(64, DType::F32);
    let bn_grad = nb::grad(|a: &(Tensor, nb::nn::BatchNorm)| a.1.forward_train(&a.0, &bn_stats).0.square().sum_all());
    let bn_args = (x.clone(), bn);
    rows.push((
        "batch_norm_fwd_bwd".into(),
        "nabla-rs".into(),
        median_ms(1, args.runs, || drop(bn_grad(&bn_args))),
    ));
    // Batch norm at evaluation (running statistics): the forward pass alone, as in inference.
    let mut stats_rng = Rng::new(7);
    let bn_eval_stats = nb::nn::BatchStats {
        mean: stats_rng.normal(&[64], 0.0, 0.1, DType::F32),
        var: stats_rng.uniform(&[64], 0.5, 1.5, DType::F32),
    };
    rows.push((
        "batch_norm_eval_fwd".into(),
        "nabla-rs".into(),
        median_ms(1, args.runs, || drop(bn_args.1.forward_eval(&x, &bn_eval_stats))),
    ));
    // The synchronised form at one rank (its collectives are the identity): the fused
    // primitive with the cross-rank sums between its kernels (no JAX or PyTorch row: theirs
    // at one rank are the plain batch norm above).
    let one_rank = nb::CrossRankSum::identity();
    let bn_synced_grad = nb::grad(|a: &(Tensor, nb::nn::BatchNorm)| {
        a.1.forward_train_synced(&a.0, &bn_stats, &one_rank)
            .0
            .square()
            .sum_all()
    });
    rows.push((
        "batch_norm_synced_fwd_bwd".into(),
        "nabla-rs".into(),
        median_ms(1, args.runs, || drop(bn_synced_grad(&bn_args))),
    ));
    let block = TransformerBlock::new(512, 8, 0.0, &mut rng, DType::F32);
    let xs = rng.normal(&[16, 256, 512], 0.0, 1.0, DType::F32);
    let step = nb::value_and_grad(|b: &TransformerBlock| b.forward(&xs, true, None).square().mean_all());
    rows.push((
        "transformer_block_step".into(),
        "nabla-rs".into(),
        median_ms(1, args.runs, || drop(step(&block))),
    ));
    let step_jit = nb::jit(&step);
    rows.push((
        "transformer_block_step".into(),
        "nabla-rs jit".into(),
        median_ms(1, args.runs, || drop(step_jit(&block))),
    ));
    // One Adam update of a 16M-element parameter (64 MB in f32), with its moments.
    let n = 1 << 24;
    let param = vec![rng.normal(&[n], 0.0, 1.0, DType::F32)];
    let grads = vec![rng.normal(&[n], 0.0, 1.0, DType::F32)];
    let adam = nb::nn::Optimizer::Adam(nb::nn::Adam::default());
    let state = adam.init(&param);
    rows.push((
        "adam_update_16M".into(),
        "nabla-rs".into(),
        median_ms(1, args.runs, || drop(adam.update(&param, &grads, &state, 1e-3))),
    ));
    // One SGD update with Nesterov momentum and weight decay of the same parameter.
    let sgd = nb::nn::Optimizer::Sgd(nb::nn::Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 5e-4,
    });
    let sgd_state = sgd.init(&param);
    rows.push((
        "sgd_nesterov_update_16M".into(),
        "nabla-rs".into(),
        median_ms(1, args.runs, || drop(sgd.update(&param, &grads, &sgd_state, 0.1))),
    ));
    // Cross-entropy of a language model's logits (batch x sequence 2048, vocabulary 32000).
    let (rows_ce, classes) = (2048usize, 32000usize);
    let logits = rng.normal(&[rows_ce, classes], 0.0, 1.0, DType::F32);
    let labels = Tensor::from_vec(
        (0..rows_ce as i64).map(|i| i * 7 % classes as i64).collect::<Vec<_>>(),
        &[rows_ce],
    );
    let ce = nb::value_and_grad(|z: &Tensor| nb::cross_entropy(z, &labels));
    rows.push((
        "cross_entropy_32k".into(),
        "nabla-rs".into(),
        median_ms(1, args.runs, || drop(ce(&logits))),
    ));
    if !args.ours_only {
        let out = std::env::temp_dir().join(format!("nabla-bench-layers-{}.json", std::process::id()));
        let status = Command::new(&args.python)
            .arg("ci/jax_layers_baseline.py")
            .arg("--json")
            .arg(&out)
            .arg("--runs")
            .arg(args.runs.to_string())
            .status();
        match status {
            Ok(s) if s.success() => {
                let text = std::fs::read_to_string(&out).unwrap_or_default();
                let refs: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_default();
                for r in refs {
                    rows.push((
                        r["case"].as_str().unwrap_or("?").into(),
                        r["system"].as_str().unwrap_or("?").into(),
                        r["value"].as_f64().unwrap_or(f64::NAN),
                    ));
                }
                let _ = std::fs::remove_file(&out);
            }
            other => eprintln!("bench_layers: the reference script did not run ({other:?}); ours only"),
        }
    }
    let mut table: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for (case, system, v) in rows {
        table.entry(case).or_default().insert(system, v);
    }
    let systems = ["nabla-rs", "nabla-rs jit", "jax.jit", "torch eager"];
    println!(
        "| case | {} | best ours / jax.jit | best ours / torch |",
        systems.join(" ms | ") + " ms"
    );
    println!("|---|---|---|---|---|---|---|");
    for case in [
        "conv2d_fwd",
        "conv2d_fwd_bwd",
        "conv2d_s2_fwd",
        "conv2d_s2_fwd_bwd",
        "conv2d_stem_fwd",
        "max_pool_fwd_bwd",
        "avg_pool_fwd_bwd",
        "attention_causal_fwd_bwd",
        "attention_padded_fwd_bwd",
        "batch_norm_fwd_bwd",
        "batch_norm_eval_fwd",
        "batch_norm_synced_fwd_bwd",
        "transformer_block_step",
        "adam_update_16M",
        "sgd_nesterov_update_16M",
        "cross_entropy_32k",
    ] {
        let r = &table[case];
        let cell = |s: &str| r.get(s).map_or("-".to_string(), |v| format!("{v:.1}"));
        let ours = ["nabla-rs", "nabla-rs jit"]
            .iter()
            .filter_map(|s| r.get(*s))
            .fold(f64::INFINITY, |a, &b| a.min(b));
        let ratio = |s: &str| r.get(s).map_or("-".to_string(), |v| format!("{:.2}", ours / v));
        println!(
            "| {case} | {} | {} | {} | {} | {} | {} |",
            cell(systems[0]),
            cell(systems[1]),
            cell(systems[2]),
            cell(systems[3]),
            ratio("jax.jit"),
            ratio("torch eager")
        );
    }
    println!("(ratios above 1 mean nabla-rs is slower)");
}
