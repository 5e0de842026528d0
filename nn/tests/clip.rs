//! Clipping by the global norm: the norm over every leaf, the PyTorch factor
//! `min(1, max / (norm + 1e-6))`, leaves under the limit unchanged, dtypes kept, under jit, and
//! the messages for a bad limit or integer leaves.

#[path = "../../core/tests/common/mod.rs"]
mod common;

use common::panic_message;
use nabla_core::{DType, Jit, Tensor};
use nabla_nn::clip_by_global_norm;

#[test]
fn gradients_over_the_limit_are_scaled_together_and_the_norm_is_returned() {
    // Two leaves whose global norm is 13 (3, 4 and 12).
    let grads = vec![
        Tensor::from_vec(vec![3.0f64, 4.0], &[2]),
        Tensor::from_vec(vec![12.0f64], &[1]),
    ];
    let (clipped, norm) = clip_by_global_norm(&grads, 6.5);
    assert_eq!(norm.item::<f64>(), 13.0);
    let factor = 6.5 / (13.0 + 1e-6);
    assert_eq!(clipped[0].to_vec::<f64>(), vec![3.0 * factor, 4.0 * factor]);
    assert_eq!(clipped[1].to_vec::<f64>(), vec![12.0 * factor]);
    // Under the limit: unchanged, bit for bit.
    let (same, norm) = clip_by_global_norm(&grads, 100.0);
    assert_eq!(norm.item::<f64>(), 13.0);
    assert_eq!(same[0].to_vec::<f64>(), grads[0].to_vec::<f64>());
    assert_eq!(same[1].to_vec::<f64>(), grads[1].to_vec::<f64>());
}

#[test]
fn half_leaves_keep_their_dtype_and_the_norm_is_f32() {
    let grads = (
        Tensor::from_vec(vec![30.0f32, 40.0], &[2]).cast(DType::BF16),
        Tensor::from_vec(vec![0.0f32], &[1]),
    );
    let (clipped, norm) = clip_by_global_norm(&grads, 5.0);
    assert_eq!(
        (norm.dtype(), clipped.0.dtype(), clipped.1.dtype()),
        (DType::F32, DType::BF16, DType::F32)
    );
    assert_eq!(norm.item::<f32>(), 50.0);
    assert_eq!(clipped.0.cast(DType::F32).to_vec::<f32>(), vec![3.0, 4.0]);
}

#[test]
fn clipping_in_a_jitted_step_follows_each_call_s_gradients() {
    let step = Jit::new(|g: &Tensor| clip_by_global_norm(g, 1.0));
    for k in 1..4 {
        let g = Tensor::from_vec(vec![0.3 * k as f64, 0.4 * k as f64], &[2]);
        let (clipped, norm) = step.call(&g);
        let n = 0.5 * k as f64;
        assert!((norm.item::<f64>() - n).abs() < 1e-12, "call {k}");
        let f = (1.0 / (n + 1e-6)).min(1.0);
        let want = [0.3 * k as f64 * f, 0.4 * k as f64 * f];
        for (a, b) in clipped.to_vec::<f64>().iter().zip(want) {
            assert!((a - b).abs() < 1e-12, "call {k}: {a} vs {b}");
        }
    }
    assert_eq!(step.cache_info().replays, 2);
}

#[test]
fn a_bad_limit_or_an_integer_leaf_is_refused_by_name() {
    let g = Tensor::from_vec(vec![1.0f32], &[1]);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let msg = panic_message(|| {
            clip_by_global_norm(&g, bad);
        });
        assert!(msg.contains("clip_by_global_norm") && msg.contains("max_norm"), "{msg}");
    }
    let msg = panic_message(|| {
        clip_by_global_norm(&vec![g.clone(), Tensor::from_vec(vec![1i64, 2], &[2])], 1.0);
    });
    assert!(msg.contains("[2]") && msg.contains("i64"), "{msg}");
}
