//! Functional random draws from key tensors (`random::key`, `random::uniform`,
//! `Tensor::dropout`): deterministic, device-independent, and replayed anew by `jit` when the
//! key is an argument.

mod common;

use nabla_core as nb;
use nb::{DType, Device, Tensor, random};

#[test]
fn uniform_draws_are_a_function_of_the_key() {
    let k1 = random::key(&[7, 0, 0]);
    let k2 = random::key(&[7, 1, 0]);
    let a = random::uniform(&k1, &[100_000], 0.0, 1.0, DType::F64, Device::Cpu).to_vec::<f64>();
    let b = random::uniform(&k1, &[100_000], 0.0, 1.0, DType::F64, Device::Cpu).to_vec::<f64>();
    let c = random::uniform(&k2, &[100_000], 0.0, 1.0, DType::F64, Device::Cpu).to_vec::<f64>();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(a.iter().all(|&u| (0.0..1.0).contains(&u)));
    let mean = a.iter().sum::<f64>() / a.len() as f64;
    assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
    // Scaled into [low, high), and rounded into other float dtypes from the same doubles.
    let s = random::uniform(&k1, &[1000], -2.0, 3.0, DType::F64, Device::Cpu).to_vec::<f64>();
    assert!(s.iter().all(|&v| (-2.0..3.0).contains(&v)));
    let f = random::uniform(&k1, &[1000], 0.0, 1.0, DType::F32, Device::Cpu).to_vec::<f32>();
    assert_eq!(f, a[..1000].iter().map(|&v| v as f32).collect::<Vec<_>>());
}

#[test]
fn dropout_zeroes_at_the_rate_scales_the_rest_and_its_gradient_follows_the_mask() {
    let x = Tensor::ones(&[200_000], DType::F64);
    let key = random::key(&[1, 2, 3]);
    let y = x.dropout(0.25, &key).to_vec::<f64>();
    let zeros = y.iter().filter(|&&v| v == 0.0).count() as f64 / y.len() as f64;
    assert!((zeros - 0.25).abs() < 0.005, "dropped {zeros}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-15));
    // d/dx sum(dropout(x)) is the mask over (1 - rate): the output divided by x.
    let g = nb::grad(|x: &Tensor| x.dropout(0.25, &key).sum_all())(&x).to_vec::<f64>();
    assert_eq!(g, y);
    assert_eq!(x.dropout(0.0, &key).to_vec::<f64>(), x.to_vec::<f64>());
    let msg = common::panic_message(|| {
        let _ = x.dropout(1.0, &key);
    });
    assert!(msg.contains("dropout: rate must be in [0, 1), got 1"), "{msg}");
    let msg = common::panic_message(|| {
        let _ = x.dropout(0.5, &Tensor::from_vec(vec![1.0f64], &[]));
    });
    assert!(msg.contains("the key must be one i64 element"), "{msg}");
}

#[test]
fn a_jitted_step_draws_a_new_mask_for_each_key_it_is_given() {
    let step = |(x, key): &(Tensor, Tensor)| x.dropout(0.5, key).sum_all();
    let jitted = nb::Jit::new(step);
    let x = Tensor::ones(&[1000], DType::F64);
    let mut seen = Vec::new();
    for s in 0..3u64 {
        let key = random::key(&[9, s]);
        let eager = step(&(x.clone(), key.clone())).item::<f64>();
        let replayed = jitted.call(&(x.clone(), key)).item::<f64>();
        assert_eq!(replayed, eager, "step {s}");
        seen.push(eager);
    }
    assert!(seen[0] != seen[1] && seen[1] != seen[2], "{seen:?}");
    assert_eq!(jitted.cache_info().replays, 2, "{:?}", jitted.cache_info());
}

#[test]
fn folded_keys_are_new_streams_computed_without_reading_the_key() {
    let k = random::key(&[5]);
    let (a, b) = (random::fold_in(&k, 1), random::fold_in(&k, 2));
    assert_eq!(a.dtype(), DType::I64);
    assert_eq!(random::fold_in(&k, 1).item::<i64>(), a.item::<i64>());
    let draw = |key: &Tensor| random::uniform(key, &[64], 0.0, 1.0, DType::F64, Device::Cpu).to_vec::<f64>();
    let (da, db, dk) = (draw(&a), draw(&b), draw(&k));
    assert!(da != db && da != dk && db != dk);
}
