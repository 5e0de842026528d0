//! The CNN and transformer layers: shapes, what each computes, causality, dropout keys, and
//! gradients of a whole block against finite differences (f64).

use nabla_core::{self as nb, Conv2dOptions, DType, Rng, Tensor, Tree, random};
use nabla_nn::{Conv2d, Dropout, Embedding, LayerNorm, MultiHeadAttention, TransformerBlock};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max_all().item::<f64>()
}

#[test]
fn conv2d_layer_adds_its_bias_per_channel() {
    let mut rng = Rng::new(1);
    let opts = Conv2dOptions {
        padding: (1, 1),
        ..Conv2dOptions::default()
    };
    let mut layer = Conv2d::new(3, 4, (3, 3), opts, &mut rng, DType::F64);
    layer.b = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[4]);
    let x = rng.normal(&[2, 3, 5, 5], 0.0, 1.0, DType::F64);
    let y = layer.forward(&x);
    assert_eq!(y.shape(), &[2, 4, 5, 5]);
    let no_bias = nb::conv2d(&x, &layer.w, opts);
    let per_channel = (&y - &no_bias).mean(vec![0, 2, 3], false).to_vec::<f64>();
    for (got, want) in per_channel.iter().zip([1.0, 2.0, 3.0, 4.0]) {
        assert!((got - want).abs() < 1e-12, "{per_channel:?}");
    }
}

#[test]
fn layer_norm_normalises_each_row_then_scales_and_shifts() {
    let mut rng = Rng::new(2);
    let x = rng.normal(&[4, 16], 3.0, 2.0, DType::F64);
    let mut ln = LayerNorm::new(16, DType::F64);
    let y = ln.forward(&x);
    assert!(y.mean(-1, false).abs().max_all().item::<f64>() < 1e-12);
    assert!((y.var(-1, false) - 1.0).abs().max_all().item::<f64>() < 1e-3);
    ln.gamma = Tensor::full(&[16], 2.0, DType::F64);
    ln.beta = Tensor::full(&[16], -1.0, DType::F64);
    assert!(max_diff(&ln.forward(&x), &(y * 2.0 - 1.0)) < 1e-12);
}

#[test]
fn embedding_looks_up_rows_and_accumulates_gradients_of_repeated_ids() {
    let mut rng = Rng::new(3);
    let emb = Embedding::new(5, 3, &mut rng, DType::F64);
    let ids = Tensor::from_vec(vec![4i64, 0, 4, 2], &[2, 2]);
    let y = emb.forward(&ids);
    assert_eq!(y.shape(), &[2, 2, 3]);
    assert_eq!(
        y.reshape([4, 3]).to_vec::<f64>()[..3],
        emb.table.to_vec::<f64>()[12..15]
    );
    let g = nb::grad(|e: &Embedding| e.forward(&ids).sum_all())(&emb);
    let counts: Vec<f64> = g.table.sum(-1, false).to_vec::<f64>();
    assert_eq!(counts, vec![3.0, 0.0, 3.0, 0.0, 6.0]);
    let msg = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        emb.forward(&Tensor::from_vec(vec![5i64], &[1]))
    }))
    .err()
    .and_then(|e| e.downcast::<String>().ok())
    .map(|s| *s)
    .unwrap_or_default();
    assert!(msg.contains("index 5 is out of range"), "{msg}");
}

#[test]
fn causal_attention_ignores_later_positions_and_full_attention_does_not() {
    let mut rng = Rng::new(4);
    let mha = MultiHeadAttention::new(8, 2, &mut rng, DType::F64);
    let x = rng.normal(&[2, 5, 8], 0.0, 1.0, DType::F64);
    // The same sequences with positions 3 and 4 changed.
    let later = rng.normal(&[2, 2, 8], 0.0, 1.0, DType::F64);
    let x2 = nb::concatenate(&[x.slice_axis(1, Some(0), Some(3), 1), later], 1);
    let (a, b) = (mha.forward(&x, true, None), mha.forward(&x2, true, None));
    assert_eq!(a.shape(), &[2, 5, 8]);
    let head = |t: &Tensor| t.slice_axis(1, Some(0), Some(3), 1);
    assert!(max_diff(&head(&a), &head(&b)) < 1e-12);
    let (c, d) = (mha.forward(&x, false, None), mha.forward(&x2, false, None));
    assert!(max_diff(&head(&c), &head(&d)) > 1e-3);
}

#[test]
fn a_transformer_block_is_deterministic_per_key_and_its_gradients_match_finite_differences() {
    let mut rng = Rng::new(5);
    let block = TransformerBlock::new(8, 2, 0.1, &mut rng, DType::F64);
    let x = rng.normal(&[2, 4, 8], 0.0, 1.0, DType::F64);
    let eval = block.forward(&x, true, None);
    assert_eq!(eval.shape(), &[2, 4, 8]);
    let k = random::key(&[0, 1, 0]);
    let t1 = block.forward(&x, true, Some(&k));
    let t2 = block.forward(&x, true, Some(&k));
    let t3 = block.forward(&x, true, Some(&random::key(&[0, 2, 0])));
    assert!(max_diff(&t1, &t2) == 0.0);
    assert!(max_diff(&t1, &eval) > 1e-6 && max_diff(&t1, &t3) > 1e-6);
    assert_eq!(
        Dropout { rate: 0.5 }.forward(&x, None).to_vec::<f64>(),
        x.to_vec::<f64>()
    );
    // d/dt loss(params + t v) at t = 0, by jvp and by central differences, in eval mode and
    // with a dropout key.
    for key in [None, Some(&k)] {
        let loss = |p: &TransformerBlock| p.forward(&x, true, key).square().mean_all();
        let direction = block.map_leaves(|t| Rng::new(t.numel() as u64).normal(t.shape(), 0.0, 1.0, DType::F64));
        let shifted = |s: f64| {
            let leaves: Vec<Tensor> = block
                .leaves()
                .iter()
                .zip(direction.leaves())
                .map(|(p, v)| p + v * s)
                .collect();
            block.rebuild(leaves)
        };
        let eps = 1e-6;
        let fd = (loss(&shifted(eps)).item::<f64>() - loss(&shifted(-eps)).item::<f64>()) / (2.0 * eps);
        let (_, jvp) = nb::jvp(loss, &block, &direction);
        let grads = nb::grad(loss)(&block);
        let via_grad: f64 = grads
            .leaves()
            .iter()
            .zip(direction.leaves())
            .map(|(g, v)| (g * v).sum_all().item::<f64>())
            .sum();
        let jvp = jvp.item::<f64>();
        assert!(
            (jvp - fd).abs() < 1e-6 * (1.0 + fd.abs()),
            "jvp {jvp} vs finite differences {fd}"
        );
        assert!(
            (via_grad - fd).abs() < 1e-6 * (1.0 + fd.abs()),
            "grad {via_grad} vs finite differences {fd}"
        );
    }
}

#[test]
fn padding_a_batch_changes_neither_the_real_tokens_outputs_nor_the_gradients() {
    let mut rng = Rng::new(9);
    let (d, l, lengths) = (16, 7, [7usize, 4, 1]);
    let block = TransformerBlock::new(d, 2, 0.0, &mut rng, DType::F64);
    let x = rng.normal(&[3, l, d], 0.0, 1.0, DType::F64);
    let real: Vec<f64> = (0..3 * l)
        .map(|e| if e % l < lengths[e / l] { 1.0 } else { 0.0 })
        .collect();
    let real = Tensor::from_vec(real, &[3, l]);
    // Padded keys are dropped, and padded queries keep no key: they attend to nothing.
    let kept = real.gt_scalar(0.5);
    let mask = kept.reshape([3, 1, 1, l]).logical_and(&kept.reshape([3, 1, l, 1]));
    let weights = real.reshape([3, l, 1]);
    for causal in [false, true] {
        let padded = |b: &TransformerBlock| {
            (b.forward_masked(&x, causal, Some(&mask), None) * &weights)
                .sin()
                .sum_all()
        };
        let (value, grads) = nb::value_and_grad(padded)(&block);
        // Each sequence alone, cut to its length.
        let alone = |b: &TransformerBlock, s: usize| {
            let xs = x.slice_axis(0, Some(s as isize), Some(s as isize + 1), 1).slice_axis(
                1,
                Some(0),
                Some(lengths[s] as isize),
                1,
            );
            b.forward(&xs, causal, None).sin().sum_all()
        };
        let mut want_value = 0.0;
        let mut want: Vec<Tensor> = block.leaves().iter().map(|t| t.zeros_like()).collect();
        for s in 0..3 {
            let (v, g) = nb::value_and_grad(|b: &TransformerBlock| alone(b, s))(&block);
            want_value += v.item::<f64>();
            want = want.iter().zip(g.leaves()).map(|(a, b)| a + b).collect();
        }
        assert!(
            (value.item::<f64>() - want_value).abs() < 1e-10,
            "causal {causal}: loss"
        );
        for (i, (got, want)) in grads.leaves().iter().zip(&want).enumerate() {
            let got_values = got.to_vec::<f64>();
            assert!(got_values.iter().all(|g| g.is_finite()), "causal {causal}: leaf {i}");
            assert!(
                max_diff(got, want) < 1e-10,
                "causal {causal}: leaf {i}: {}",
                max_diff(got, want)
            );
        }
    }
}
