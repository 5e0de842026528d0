//! The GPU benchmark of `ci/gpu-check`: nabla-rs on `cuda:0`, one JSON line per case (median
//! milliseconds), for `ci/gpu_bench_torch.py` to put next to PyTorch's numbers on the same GPU.
//! Cases: `mlp_step` (784-512-512-10 tanh/relu/log-softmax MLP, value and gradients) at batch
//! 128 and 4096, eager and under `nb::jit`; `add_2^28` and `neg_2^28` (f32 elementwise; the
//! script compares their bandwidth with PyTorch's `clone`, the copy bandwidth); `matmul_8192`
//! in f32 and bf16; causal attention `[16, 8, 1024, 64]` f32, value and gradients, through
//! the fused kernels and composed (products and softmax rows, as a mask makes it), to show
//! which is faster on this GPU; batch norm of `[32, 64, 56, 56]` f32 in training mode, value
//! and the gradients of the input, scale and shift, through the fused kernels and composed.

mod common;

use std::time::Instant;

use common::mlp_loss;
use nabla_core as nb;
use nabla_cuda::DeviceApi;
use nb::{DType, Device, Rng, Tensor};

fn main() {
    let backend = match nabla_cuda::init(0) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gpu_bench: {e}");
            std::process::exit(2);
        }
    };
    eprintln!("gpu_bench: cuda:0 kernels: {}", backend.api().compiler_info());
    let sync = || backend.api().synchronize().expect("synchronise");
    let gpu = Device::Cuda(0);
    // Median of `runs` timed calls after `warm` untimed ones, synchronised around each.
    let median_ms = |warm: usize, runs: usize, f: &mut dyn FnMut()| {
        for _ in 0..warm {
            f();
        }
        sync();
        let mut t: Vec<f64> = (0..runs)
            .map(|_| {
                let s = Instant::now();
                f();
                sync();
                s.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        t.sort_by(f64::total_cmp);
        t[runs / 2]
    };
    let row = |case: &str, system: &str, ms: f64| {
        println!("{{\"case\": \"{case}\", \"system\": \"{system}\", \"ms\": {ms:.5}}}");
    };
    // `gpu_bench attention LABEL`: the fused attention rows alone, as system `LABEL` (run once
    // per NABLA_ATTENTION_TUNING by ci/gpu_check_run.sh to compare the kernels' tunings).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("attention") {
        let label = args.get(2).map_or("nabla-rs", String::as_str);
        attention_rows(gpu, &median_ms, &row, Some(label));
        return;
    }
    let mut rng = Rng::new(0);
    let mut layer = |i: usize, o: usize| {
        (
            rng.normal(&[i, o], 0.0, 1.0 / (i as f64).sqrt(), DType::F32)
                .to_device(gpu)
                .unwrap(),
            Tensor::zeros(&[o], DType::F32).to_device(gpu).unwrap(),
        )
    };
    let params = [layer(784, 512), layer(512, 512), layer(512, 10)];
    for batch in [128usize, 4096] {
        let mut rng = Rng::new(1);
        let x = rng.normal(&[batch, 784], 0.0, 1.0, DType::F32).to_device(gpu).unwrap();
        let labels = Tensor::from_vec((0..batch).map(|i| (i * 7 % 10) as i64).collect(), &[batch]);
        let y = nb::one_hot(&labels, 10, DType::F32).to_device(gpu).unwrap();
        let vg = nb::value_and_grad(|p: &[(Tensor, Tensor); 3]| mlp_loss(p, &x, &y));
        let vg_jit = nb::jit(&vg);
        row(
            &format!("mlp_step_b{batch}"),
            "nabla-rs",
            median_ms(5, 50, &mut || drop(vg(&params))),
        );
        row(
            &format!("mlp_step_b{batch}"),
            "nabla-rs jit",
            median_ms(5, 50, &mut || drop(vg_jit(&params))),
        );
    }
    let n = 1usize << 28;
    // Filled on the device (a GiB each; nothing to copy over).
    let a = Tensor::full_on(&[n], 1.0, DType::F32, gpu);
    let b = Tensor::full_on(&[n], 2.0, DType::F32, gpu);
    row("add_2^28", "nabla-rs", median_ms(3, 20, &mut || drop(&a + &b)));
    // A one-in, one-out kernel: the same traffic as a copy.
    row("neg_2^28", "nabla-rs", median_ms(3, 20, &mut || drop(-&a)));
    for dtype in [DType::F32, DType::BF16] {
        let m = 8192;
        let x = Rng::new(2)
            .normal(&[m, m], 0.0, 1.0, DType::F32)
            .cast(dtype)
            .to_device(gpu)
            .unwrap();
        let w = Rng::new(3)
            .normal(&[m, m], 0.0, 1.0, DType::F32)
            .cast(dtype)
            .to_device(gpu)
            .unwrap();
        row(
            &format!("matmul_8192_{dtype}"),
            "nabla-rs",
            median_ms(2, 10, &mut || drop(x.matmul(&w))),
        );
    }
    attention_rows(gpu, &median_ms, &row, None);
    let bn: Vec<Tensor> = [
        (7, &[32usize, 64, 56, 56][..], 0.0),
        (8, &[64], 1.0),
        (9, &[64], 0.0),
        (10, &[32, 64, 56, 56], 0.0),
    ]
    .iter()
    .map(|&(seed, shape, mean)| {
        Rng::new(seed)
            .normal(shape, mean, 1.0, DType::F32)
            .to_device(gpu)
            .unwrap()
    })
    .collect();
    // Batch norm as one primitive (the fused kernels), and written out from public ops.
    let bn_fused = |t: &Vec<Tensor>| t[0].batch_norm(&t[1], &t[2], 1, 1e-5).0;
    let bn_composed = |t: &Vec<Tensor>| {
        let (mean, var) = (t[0].mean([0, 2, 3], true), t[0].var([0, 2, 3], true));
        (&t[0] - mean) * (var + 1e-5).rsqrt() * t[1].reshape([1, 64, 1, 1]) + t[2].reshape([1, 64, 1, 1])
    };
    let systems: [(&str, Layer); 2] = [("nabla-rs", &bn_fused), ("nabla-rs composed", &bn_composed)];
    for (system, norm) in systems {
        // The gradients of the input, scale and shift (not of the weights t[3]).
        let step = nb::value_and_grad(|t: &Vec<Tensor>| (norm(t) * &bn[3]).sum_all());
        let inputs = bn[..3].to_vec();
        row(
            "batch_norm_32x64x56x56",
            system,
            median_ms(3, 20, &mut || drop(step(&inputs))),
        );
    }
    // Pooling read in place (the stem's 3x3, stride 2, padding 1): max pooling's value and
    // the gradient of sum(y), average pooling's gradient of sum(y^2).
    let pool_in = Rng::new(11)
        .normal(&[32, 64, 112, 112], 0.0, 1.0, DType::F32)
        .to_device(gpu)
        .unwrap();
    let max_grad = nb::grad(|x: &Tensor| nb::max_pool2d(x, (3, 3), (2, 2), (1, 1)).sum_all());
    row(
        "max_pool_32x64x112x112",
        "nabla-rs",
        median_ms(3, 20, &mut || drop(max_grad(&pool_in))),
    );
    let avg_grad = nb::grad(|x: &Tensor| nb::avg_pool2d(x, (3, 3), (2, 2), (1, 1)).square().sum_all());
    row(
        "avg_pool_32x64x112x112",
        "nabla-rs",
        median_ms(3, 20, &mut || drop(avg_grad(&pool_in))),
    );
    eprintln!("gpu_bench: libraries: {}", nabla_cuda::loaded_libraries().join(" "));
    eprintln!("gpu_bench: memory: {}", backend.api().allocator_info());
}

/// A function of the benchmark's input tensors.
type Layer<'a> = &'a dyn Fn(&Vec<Tensor>) -> Tensor;

/// The median milliseconds of `runs` calls after `warm` ones (`median_ms` in `main`).
type MedianMs<'a> = dyn Fn(usize, usize, &mut dyn FnMut()) -> f64 + 'a;

/// Causal attention `[16, 8, 1024, 64]` f32 rows: the fused forward alone, then value and
/// gradients fused, fused with a key padding mask and composed; only the fused ones, as system
/// `only`, when given.
fn attention_rows(gpu: Device, median_ms: &MedianMs, row: &dyn Fn(&str, &str, f64), only: Option<&str>) {
    let qkv: Vec<Tensor> = (4..7)
        .map(|seed| {
            Rng::new(seed)
                .normal(&[16, 8, 1024, 64], 0.0, 1.0, DType::F32)
                .to_device(gpu)
                .unwrap()
        })
        .collect();
    // The fused kernels; the masked ones with a key padding mask that keeps every key; and
    // attention written out from public ops (products, a causal `where`, softmax), which
    // forms the [16, 8, 1024, 1024] scores.
    let padding = Tensor::ones(&[16, 1, 1, 1024], DType::F32)
        .gt_scalar(0.0)
        .to_device(gpu)
        .unwrap();
    let positions = Tensor::arange(0.0, 1024.0, 1.0, DType::I64).to_device(gpu).unwrap();
    let causal = positions.reshape([1, 1024]).le(&positions.reshape([1024, 1]));
    let composed = |t: &Vec<Tensor>| {
        let scores = (&t[0] * 0.125).matmul(&t[1].swap_axes(-1, -2));
        let scores = causal.where_(&scores, &scores.scalar_like(f64::NEG_INFINITY));
        scores.softmax(-1).matmul(&t[2])
    };
    let fused = |t: &Vec<Tensor>| nb::scaled_dot_product_attention(&t[0], &t[1], &t[2], None, true);
    let masked = |t: &Vec<Tensor>| nb::scaled_dot_product_attention(&t[0], &t[1], &t[2], Some(&padding), true);
    let all: [(&str, Layer); 3] = [
        ("nabla-rs", &fused),
        ("nabla-rs masked", &masked),
        ("nabla-rs composed", &composed),
    ];
    let systems = match only {
        Some(label) => vec![(label, &fused as Layer)],
        None => all.to_vec(),
    };
    // The forward alone (the fused kernel's output), to split the step's time.
    row(
        "attention_causal_16x8x1024x64",
        &format!("{} forward", only.unwrap_or("nabla-rs")),
        median_ms(2, 10, &mut || drop(fused(&qkv))),
    );
    for (system, attention) in systems {
        let step = nb::value_and_grad(|t: &Vec<Tensor>| attention(t).square().mean_all());
        row(
            "attention_causal_16x8x1024x64",
            system,
            median_ms(2, 10, &mut || drop(step(&qkv))),
        );
    }
}
