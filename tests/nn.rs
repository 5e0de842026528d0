//! Training pieces: initialisers, layers as pytrees, optimizers against their formulas,
//! schedules, data loading and sharding, the IDX reader, and a short training run that resumes
//! from a checkpoint bit-identically.

use nabla as nb;
use nb::nn::checkpoint::{self, Checkpoint};
use nb::nn::data::{DataError, Dataset, read_idx, shard_range};
use nb::nn::{Activation, Adam, Init, Mlp, Optimizer, Schedule, Sgd, accuracy, digest};
use nb::{DType, Rng, Tensor, Tree};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nabla-nn-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn initialisers_have_the_documented_scale() {
    let mut rng = Rng::new(0);
    let (fan_in, fan_out) = (400, 200);
    let std_of = |t: &Tensor| t.var(nb::Axes::All, false).item::<f64>().sqrt();
    let he = Init::HeNormal.sample(&mut rng, &[fan_in, fan_out], DType::F64);
    assert!((std_of(&he) - (2.0 / fan_in as f64).sqrt()).abs() < 0.002);
    let glorot = Init::GlorotUniform.sample(&mut rng, &[fan_in, fan_out], DType::F64);
    let limit = (6.0 / (fan_in + fan_out) as f64).sqrt();
    assert!(glorot.abs().max(nb::Axes::All, false).item::<f64>() <= limit);
    assert!((std_of(&glorot) - limit / 3f64.sqrt()).abs() < 0.002);
    let lecun = Init::LecunNormal.sample(&mut rng, &[fan_in, fan_out], DType::F64);
    assert!((std_of(&lecun) - (1.0 / fan_in as f64).sqrt()).abs() < 0.002);
    // Seeded: the same seed gives the same weights.
    let a = Init::HeUniform
        .sample(&mut Rng::new(9), &[3, 2], DType::F32)
        .to_vec::<f32>();
    assert_eq!(
        a,
        Init::HeUniform
            .sample(&mut Rng::new(9), &[3, 2], DType::F32)
            .to_vec::<f32>()
    );
}

#[test]
fn mlp_is_a_pytree_and_its_gradient_is_an_mlp() {
    let mut rng = Rng::new(1);
    let mlp = Mlp::new(
        &[4, 8, 8, 3],
        &[Activation::Tanh, Activation::Relu],
        &mut rng,
        DType::F64,
    );
    assert_eq!(mlp.leaves().len(), 6);
    assert_eq!(mlp.parameter_count(), 4 * 8 + 8 + 8 * 8 + 8 + 8 * 3 + 3);
    let x = rng.normal(&[5, 4], 0.0, 1.0, DType::F64);
    let y = nb::tensor([0, 2, 1, 1, 0]);
    let g: Mlp = nb::grad(|m: &Mlp| nb::cross_entropy(&m.forward(&x), &y))(&mlp);
    assert_eq!(g.activations, mlp.activations);
    assert_eq!(g.layers[2].w.shape(), &[8, 3]);
}

#[test]
fn optimizers_follow_their_formulas() {
    let p = nb::tensor_of([1.0, -2.0], DType::F64);
    let g = nb::tensor_of([0.5, 0.25], DType::F64);
    let sgd = Optimizer::Sgd(Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 0.1,
    });
    let s0 = sgd.init(&p);
    let (p1, s1) = sgd.update(&p, &g, &s0, 0.1);
    // g' = g + 0.1 p = [0.6, 0.05]; v = g'; p = p - 0.1 v.
    assert_eq!(p1.to_vec::<f64>(), vec![1.0 - 0.06, -2.0 - 0.005]);
    let (p2, _) = sgd.update(&p1, &g, &s1, 0.1);
    let v2: Vec<f64> = [0.6, 0.05]
        .iter()
        .zip([0.5 + 0.1 * 0.94, 0.25 + 0.1 * -2.005])
        .map(|(v, gg)| 0.9 * v + gg)
        .collect();
    let want = [0.94 - 0.1 * v2[0], -2.005 - 0.1 * v2[1]];
    for (a, b) in p2.to_vec::<f64>().iter().zip(want) {
        assert!((a - b).abs() < 1e-12);
    }
    let nesterov = Optimizer::Sgd(Sgd {
        momentum: 0.9,
        nesterov: true,
        weight_decay: 0.0,
    });
    let (pn, _) = nesterov.update(&p, &g, &nesterov.init(&p), 0.1);
    // v = g; step along g + 0.9 v = 1.9 g.
    assert_eq!(pn.to_vec::<f64>(), vec![1.0 - 0.1 * 1.9 * 0.5, -2.0 - 0.1 * 1.9 * 0.25]);
    let adam = Optimizer::Adam(Adam::default());
    let (pa, sa) = adam.update(&p, &g, &adam.init(&p), 0.01);
    // First Adam step moves every weight by lr * g / (|g| + eps') ~ lr * sign(g).
    for (a, b) in pa.to_vec::<f64>().iter().zip([1.0 - 0.01, -2.0 - 0.01]) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    assert_eq!(sa.count(), 1);
    let adamw = Optimizer::Adam(Adam {
        weight_decay: 0.5,
        decoupled_weight_decay: true,
        ..Adam::default()
    });
    let (pw, _) = adamw.update(&p, &g, &adamw.init(&p), 0.01);
    for (a, b) in pw.to_vec::<f64>().iter().zip(pa.to_vec::<f64>()) {
        assert!((a - b).abs() > 1e-4, "AdamW decays the weights");
    }
}

#[test]
fn schedules() {
    assert_eq!(Schedule::Constant(0.1).at(1000), 0.1);
    let step = Schedule::Step {
        lr: 1.0,
        every: 10,
        gamma: 0.5,
    };
    assert_eq!((step.at(9), step.at(10), step.at(25)), (1.0, 0.5, 0.25));
    let cos = Schedule::Cosine {
        lr: 1.0,
        warmup: 10,
        total: 110,
        min_lr: 0.0,
    };
    assert!((cos.at(0) - 0.1).abs() < 1e-12 && (cos.at(9) - 1.0).abs() < 1e-12);
    assert!((cos.at(60) - 0.5).abs() < 1e-12 && cos.at(110) == 0.0 && cos.at(500) == 0.0);
}

#[test]
fn data_split_batches_and_shards() {
    let digits = Dataset::digits();
    assert_eq!((digits.len(), digits.x.shape()), (1797, &[1797, 64][..]));
    assert!(digits.x.max(nb::Axes::All, false).item::<f32>() <= 1.0);
    let (train, test) = digits.split(0.2, 0);
    assert_eq!((train.len(), test.len()), (1438, 359));
    let b1 = train.batches(100, 3, 0);
    let b2 = train.batches(100, 3, 0);
    assert_eq!(b1.len(), 15);
    assert_eq!(b1[0].y.to_vec::<i64>(), b2[0].y.to_vec::<i64>());
    assert_ne!(b1[0].y.to_vec::<i64>(), train.batches(100, 3, 1)[0].y.to_vec::<i64>());
    for (n, world) in [(10, 3), (128, 4), (5, 8)] {
        let mut covered = vec![];
        for r in 0..world {
            covered.extend(shard_range(n, r, world));
        }
        assert_eq!(covered, (0..n).collect::<Vec<_>>());
    }
    let shard = b1[0].shard(1, 4);
    assert_eq!(shard.y.to_vec::<i64>(), b1[0].y.to_vec::<i64>()[25..50].to_vec());
}

fn write_idx(path: &std::path::Path, dims: &[u32], data: &[u8]) {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        bytes.extend(d.to_be_bytes());
    }
    bytes.extend(data);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn idx_files_are_read_and_bad_ones_rejected() {
    let dir = temp_dir("idx");
    let pixels: Vec<u8> = (0..2 * 3 * 3).map(|i| i as u8 * 10).collect();
    write_idx(&dir.join("train-images-idx3-ubyte"), &[2, 3, 3], &pixels);
    write_idx(&dir.join("train-labels-idx1-ubyte"), &[2], &[7, 1]);
    write_idx(&dir.join("t10k-images-idx3-ubyte"), &[1, 3, 3], &pixels[..9]);
    write_idx(&dir.join("t10k-labels-idx1-ubyte"), &[1], &[4]);
    let (train, test) = Dataset::mnist(&dir).unwrap();
    assert_eq!(train.x.shape(), &[2, 9]);
    assert_eq!(train.y.to_vec::<i64>(), vec![7, 1]);
    assert_eq!(test.y.to_vec::<i64>(), vec![4]);
    assert!((train.x.to_vec::<f32>()[1] - 10.0 / 255.0).abs() < 1e-7);
    write_idx(&dir.join("short"), &[1000, 28, 28], &[0; 10]);
    let e = read_idx(&dir.join("short")).unwrap_err();
    assert!(
        matches!(e, DataError::Format { .. }) && e.to_string().contains("need 784000 data bytes"),
        "{e}"
    );
    std::fs::write(dir.join("text"), "hello world").unwrap();
    assert!(
        read_idx(&dir.join("text"))
            .unwrap_err()
            .to_string()
            .contains("not an IDX file")
    );
    assert!(matches!(
        read_idx(&dir.join("missing")).unwrap_err(),
        DataError::Io { .. }
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Trains for `steps` steps from (model, state) and returns them.
fn train(
    mut model: Mlp,
    opt: &Optimizer,
    mut state: nb::nn::OptState<Mlp>,
    data: &Dataset,
    from: u64,
    to: u64,
) -> (Mlp, nb::nn::OptState<Mlp>) {
    let per_epoch = data.len().div_ceil(64) as u64;
    let mut step = from;
    while step < to {
        let epoch = step / per_epoch;
        for batch in data.batches(64, 5, epoch).iter().skip((step % per_epoch) as usize) {
            if step >= to {
                break;
            }
            let g = nb::grad(|m: &Mlp| nb::cross_entropy(&m.forward(&batch.x), &batch.y))(&model);
            (model, state) = opt.update(&model, &g, &state, 3e-3);
            step += 1;
        }
    }
    (model, state)
}

#[test]
fn training_learns_digits_and_resumes_bit_identically() {
    let (train_set, test_set) = Dataset::digits().split(0.2, 0);
    let opt = Optimizer::Adam(Adam::default());
    let fresh = || Mlp::new(&[64, 64, 10], &[Activation::Relu], &mut Rng::new(2), DType::F32);
    let m0 = fresh();
    let (full, _) = train(m0.clone(), &opt, opt.init(&m0), &train_set, 0, 120);
    assert!(accuracy(&full.forward(&test_set.x), &test_set.y) > 0.9);
    // Stop at step 50 (mid-epoch), checkpoint, restore into fresh templates, continue.
    let (half, state) = train(m0.clone(), &opt, opt.init(&m0), &train_set, 0, 50);
    let dir = temp_dir("resume");
    let path = dir.join("ckpt.bin");
    let ck = Checkpoint {
        step: 50,
        rng_state: (0, 0),
        params: half.leaves(),
        optimizer_state: state.leaves(),
        metadata: Default::default(),
    };
    checkpoint::save(&path, &ck).unwrap();
    let back = checkpoint::load(&path).unwrap();
    let template = fresh();
    let model = template.rebuild(back.params);
    let state = opt.init(&template).restored(back.optimizer_state, back.step).unwrap();
    let (resumed, _) = train(model, &opt, state, &train_set, back.step, 120);
    assert_eq!(
        digest::digest_hex(&resumed.leaves()),
        digest::digest_hex(&full.leaves())
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What a training step takes: model, optimizer state, inputs and labels.
type StepArgs = (Mlp, nb::nn::OptState<Mlp>, Tensor, Tensor);

/// A whole training step (gradient and update) as one function of the model, optimizer state
/// and batch: what one would hand to `jit`.
fn train_step(opt: Optimizer) -> impl Fn(&StepArgs) -> (Mlp, nb::nn::OptState<Mlp>) {
    move |(model, state, x, y): &StepArgs| {
        let g = nb::grad(|m: &Mlp| nb::cross_entropy(&m.forward(x), y))(model);
        opt.update(model, &g, state, 0.05)
    }
}

#[test]
fn jit_of_a_whole_training_step_replays_it_with_sgd_and_adam() {
    let (train, _) = Dataset::digits().split(0.2, 0);
    let batches = train.batches(16, 0, 0);
    let sgd = Optimizer::Sgd(Sgd {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 1e-4,
    });
    let adam = Optimizer::Adam(Adam::default());
    let adamw = Optimizer::Adam(Adam {
        weight_decay: 0.01,
        decoupled_weight_decay: true,
        ..Adam::default()
    });
    for opt in [sgd, adam, adamw] {
        let model = Mlp::new(&[64, 16, 10], &[Activation::Relu], &mut Rng::new(3), DType::F32);
        let step = train_step(opt);
        let jitted = nb::Jit::new(train_step(opt));
        let (mut eager, mut fast) = ((model.clone(), opt.init(&model)), (model.clone(), opt.init(&model)));
        for b in batches.iter().take(4) {
            eager = step(&(eager.0, eager.1, b.x.clone(), b.y.clone()));
            fast = jitted.call(&(fast.0, fast.1, b.x.clone(), b.y.clone()));
        }
        assert_eq!(
            digest::digest_hex(&eager.0.leaves()),
            digest::digest_hex(&fast.0.leaves()),
            "{opt:?}: four jitted steps end where four eager steps do"
        );
        // Adam's step count is a leaf of the state: the replays advance it as eager steps do.
        if let Optimizer::Adam(_) = opt {
            assert_eq!((eager.1.count(), fast.1.count()), (4, 4), "{opt:?}");
        }
        let info = jitted.cache_info();
        assert_eq!((info.compiled, info.replays), (1, 3), "{opt:?}: {info:?}");
    }
}

#[test]
fn adam_state_restores_from_current_and_older_checkpoint_leaves() {
    let model = Mlp::new(&[4, 3, 2], &[Activation::Relu], &mut Rng::new(1), DType::F32);
    let opt = Optimizer::Adam(Adam::default());
    let state = opt.init(&model);
    let g = model.map_leaves(|t| t.ones_like());
    let (_, stepped) = opt.update(&model, &g, &state, 0.1);
    let leaves = stepped.leaves();
    // Current checkpoints hold the count as the last leaf; older ones hold the moments only.
    let now = state.restored(leaves.clone(), 1).unwrap();
    let older = state.restored(leaves[..leaves.len() - 1].to_vec(), 1).unwrap();
    for s in [&now, &older] {
        assert_eq!(s.count(), 1);
        assert_eq!(digest::digest_hex(&s.leaves()), digest::digest_hex(&stepped.leaves()));
    }
    let e = state.restored(leaves[..2].to_vec(), 1).map(|_| ()).unwrap_err();
    assert!(
        e.contains("holds 2 optimizer tensors, this optimizer's state needs 9"),
        "{e}"
    );
}
