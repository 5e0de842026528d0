//! The fused attention primitive (`scaled_dot_product_attention` on a backend with a fused
//! kernel: the CPU in f32 and f64) against the attention written out from public ops here
//! (products, a `where` for the masks, softmax): values, gradients, second derivatives, JVPs,
//! vmap and jit, for query and key counts below, at and across the kernel's 64-query blocks,
//! causal or not, with boolean masks (key padding, arbitrary, a query that keeps no key: 0), and
//! with broadcast and strided operands. The fixture
//! matrix (`derivatives.rs` against finite differences in f64, `jax_reference.rs` against JAX)
//! runs its `sdpa` rows through the fused primitive as well.

mod common;

use common::hashed_values as inputs;
use nabla_core as nb;
use nb::{DType, Tensor};

type Qkv = (Tensor, Tensor, Tensor);

/// Attention through the fused primitive (`fused`), or written out here from public ops (the
/// reference: scores, the causal mask as a comparison of positions, softmax, product).
fn attention(t: &Qkv, causal: bool, fused: bool) -> Tensor {
    masked_attention(t, None, causal, fused)
}

/// [`attention`] with a boolean mask (broadcastable to `[.., Lq, Lk]`, true keeps a key).
fn masked_attention(t: &Qkv, mask: Option<&Tensor>, causal: bool, fused: bool) -> Tensor {
    if fused {
        return nb::scaled_dot_product_attention(&t.0, &t.1, &t.2, mask, causal);
    }
    let (lq, lk, d) = (
        t.0.shape()[t.0.rank() - 2],
        t.1.shape()[t.1.rank() - 2],
        t.0.shape()[t.0.rank() - 1],
    );
    let scores = (&t.0 * (1.0 / (d as f64).sqrt())).matmul(&t.1.swap_axes(-1, -2));
    let dropped = scores.scalar_like(f64::NEG_INFINITY);
    let scores = match mask {
        Some(m) => m.where_(&scores, &dropped),
        None => scores,
    };
    let scores = if causal {
        let rows = Tensor::arange(0.0, lq as f64, 1.0, DType::I64).reshape([lq, 1]);
        let cols = Tensor::arange(0.0, lk as f64, 1.0, DType::I64).reshape([1, lk]);
        cols.le(&rows).where_(&scores, &dropped)
    } else {
        scores
    };
    // A query that keeps no key attends to nothing (PyTorch's safe softmax): weights 0.
    let weights = scores.softmax(-1);
    if mask.is_none() || lk == 0 {
        return weights.matmul(&t.2);
    }
    let attends = scores.max(-1, true).gt_scalar(f64::NEG_INFINITY);
    attends.where_(&weights, &weights.zeros_like()).matmul(&t.2)
}

/// A loss that weighs every output element differently.
fn loss(causal: bool, fused: bool) -> impl Fn(&Qkv) -> Tensor + Copy {
    move |t: &Qkv| attention(t, causal, fused).sin().sum(nb::Axes::All, false)
}

fn close(what: &str, got: &Tensor, want: &Tensor) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    assert_eq!(got.dtype(), want.dtype(), "{what}: dtype");
    let (rtol, atol) = if got.dtype() == DType::F64 {
        (1e-11, 1e-12)
    } else {
        (2e-5, 2e-6)
    };
    common::assert_close("fused attention", what, got, want, rtol, atol);
}

fn tensor(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(inputs(n, seed), shape).cast(dtype)
}

/// Values and gradients of the fused and composed attention agree: to rounding in f64; in
/// f32, the fused result is as close to the f64 result as the composed one is (within twice
/// its error), since the two round differently (the scale is applied to the scores, not the
/// queries) and a peaked softmax amplifies either's rounding.
fn agree(what: &str, t: &Qkv, causal: bool) {
    agree_masked(what, t, None, causal);
}

/// [`agree`] with a mask.
fn agree_masked(what: &str, t: &Qkv, mask: Option<&Tensor>, causal: bool) {
    let value = |t: &Qkv, fused| masked_attention(t, mask, causal, fused);
    let gradients = |t: &Qkv, fused| {
        let g = nb::grad(|t: &Qkv| masked_attention(t, mask, causal, fused).sin().sum(nb::Axes::All, false))(t);
        vec![g.0, g.1, g.2]
    };
    let mut fused = vec![value(t, true)];
    fused.extend(gradients(t, true));
    let mut composed = vec![value(t, false)];
    composed.extend(gradients(t, false));
    let names = ["values", "dq", "dk", "dv"];
    if t.0.dtype() == DType::F64 {
        for ((f, c), name) in fused.iter().zip(&composed).zip(names) {
            close(&format!("{what} {name}"), f, c);
        }
        return;
    }
    let wide = (t.0.cast(DType::F64), t.1.cast(DType::F64), t.2.cast(DType::F64));
    let mut truth = vec![value(&wide, false)];
    truth.extend(gradients(&wide, false));
    for (((f, c), w), name) in fused.iter().zip(&composed).zip(&truth).zip(names) {
        assert_eq!(f.dtype(), t.0.dtype(), "{what} {name}: dtype");
        let error = |x: &Tensor| {
            let (x, w) = (x.cast(DType::F64).to_vec::<f64>(), w.to_vec::<f64>());
            x.iter().zip(&w).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
        };
        let (ef, ec) = (error(f), error(c));
        assert!(
            ef <= 2.0 * ec + 1e-6,
            "{what} {name}: the fused result is off by {ef:e} from f64, the composed one by {ec:e}"
        );
    }
}

#[test]
fn fused_attention_equals_the_composition_across_blocks_and_shapes() {
    for dtype in [DType::F64, DType::F32] {
        // Below one block, queries fewer and more than keys, one query, and across the
        // 64-query blocks (a partial last block; causal blocks that stop at the diagonal).
        for (lq, lk) in [(5, 5), (3, 7), (7, 3), (1, 1), (150, 150), (70, 130), (130, 70)] {
            for causal in [false, true] {
                let t = (
                    tensor(&[2, 3, lq, 8], 1, dtype),
                    tensor(&[2, 3, lk, 8], 2, dtype),
                    tensor(&[2, 3, lk, 5], 3, dtype),
                );
                agree(&format!("{dtype} lq {lq} lk {lk} causal {causal}"), &t, causal);
            }
        }
        // Head widths of a real model (the f32 products take the AVX-512 kernel, writing the
        // output next to the statistics), at and across block boundaries.
        for (lq, lk, dv) in [(150, 150, 64), (130, 70, 32), (64, 64, 64), (128, 100, 32)] {
            for causal in [false, true] {
                let t = (
                    tensor(&[2, lq, 64], 4, dtype),
                    tensor(&[2, lk, 64], 5, dtype),
                    tensor(&[2, lk, dv], 6, dtype),
                );
                agree(&format!("{dtype} lq {lq} lk {lk} dv {dv} causal {causal}"), &t, causal);
            }
        }
        // Many keys (score blocks past the L2 cache), across blocks and their groups, causal
        // blocks stopping at the diagonal.
        for (lq, lk) in [(60, 2100), (2100, 2100), (20, 9000)] {
            for causal in [false, true] {
                let t = (
                    tensor(&[lq, 4], 10, dtype),
                    tensor(&[lk, 4], 11, dtype),
                    tensor(&[lk, 3], 12, dtype),
                );
                agree(&format!("{dtype} lq {lq} lk {lk} causal {causal}"), &t, causal);
            }
        }
        // One matrix: the backward splits its query blocks into groups.
        for causal in [false, true] {
            let t = (
                tensor(&[300, 16], 7, dtype),
                tensor(&[290, 16], 8, dtype),
                tensor(&[290, 24], 9, dtype),
            );
            agree(&format!("{dtype} one matrix causal {causal}"), &t, causal);
        }
    }
}

#[test]
fn empty_extents_give_what_the_composition_gives() {
    for causal in [false, true] {
        for (b, lq, lk) in [(0, 4, 4), (2, 0, 4), (2, 4, 0)] {
            let t = (
                tensor(&[b, lq, 8], 1, DType::F32),
                tensor(&[b, lk, 8], 2, DType::F32),
                tensor(&[b, lk, 3], 3, DType::F32),
            );
            let (f, c) = (attention(&t, causal, true), attention(&t, causal, false));
            assert_eq!(f.shape(), &[b, lq, 3], "batch {b} lq {lq} lk {lk}");
            assert_eq!(f.to_vec::<f32>(), c.to_vec::<f32>(), "batch {b} lq {lq} lk {lk}");
            let keep = Tensor::ones(&[lq, lk], DType::F32).gt_scalar(0.5);
            let (f, c) = (
                masked_attention(&t, Some(&keep), causal, true),
                masked_attention(&t, Some(&keep), causal, false),
            );
            assert_eq!(f.shape(), &[b, lq, 3], "masked, batch {b} lq {lq} lk {lk}");
            assert_eq!(
                f.to_vec::<f32>(),
                c.to_vec::<f32>(),
                "masked, batch {b} lq {lq} lk {lk}"
            );
            let (gf, gc) = (nb::grad(loss(causal, true))(&t), nb::grad(loss(causal, false))(&t));
            assert_eq!(gf.1.shape(), t.1.shape());
            assert_eq!(
                gf.1.to_vec::<f32>(),
                gc.1.to_vec::<f32>(),
                "dk, batch {b} lq {lq} lk {lk}"
            );
        }
    }
}

#[test]
fn fused_attention_broadcasts_and_reads_strided_operands() {
    for causal in [false, true] {
        // Keys and values shared by the heads (grouped queries), and by everything.
        let q = tensor(&[2, 4, 9, 6], 11, DType::F64);
        for dtype in [DType::F64, DType::F32] {
            let shared_heads = (
                tensor(&[2, 4, 70, 16], 11, dtype),
                tensor(&[2, 1, 90, 16], 12, dtype),
                tensor(&[2, 1, 90, 16], 13, dtype),
            );
            agree(
                &format!("{dtype} keys shared by the heads, causal {causal}"),
                &shared_heads,
                causal,
            );
        }
        let shared_all = (
            q.clone(),
            tensor(&[9, 6], 14, DType::F64),
            tensor(&[9, 3], 15, DType::F64),
        );
        agree(&format!("keys shared by all, causal {causal}"), &shared_all, causal);
        // Heads split off a [batch, length, heads, d] projection, as a transformer does:
        // strided views, and a transposed key matrix.
        let split = |seed| tensor(&[2, 70, 4, 6], seed, DType::F32).swap_axes(1, 2);
        let strided = (split(16), split(17), split(18));
        agree(&format!("strided heads, causal {causal}"), &strided, causal);
        // Reversed views (negative strides) along both matrix axes.
        for dtype in [DType::F64, DType::F32] {
            let flipped = |seed| tensor(&[2, 67, 16], seed, dtype).flip(vec![1isize, 2]);
            let reversed = (flipped(19), flipped(20), flipped(21));
            agree(
                &format!("reversed {dtype} operands, causal {causal}"),
                &reversed,
                causal,
            );
        }
    }
}

#[test]
fn second_derivatives_jvps_vmap_and_jit_follow_the_composition() {
    let t = (
        tensor(&[2, 70, 4], 21, DType::F64),
        tensor(&[2, 66, 4], 22, DType::F64),
        tensor(&[2, 66, 3], 23, DType::F64),
    );
    let dirs = (
        tensor(&[2, 70, 4], 24, DType::F64),
        tensor(&[2, 66, 4], 25, DType::F64),
        tensor(&[2, 66, 3], 26, DType::F64),
    );
    for causal in [false, true] {
        // Hessian-vector products: the fused backward's own derivative.
        let hvp = |fused: bool| {
            let d = dirs.clone();
            nb::grad(move |t: &Qkv| {
                let g = nb::grad(loss(causal, fused))(t);
                ((&g.0 * &d.0).sum_all() + (&g.1 * &d.1).sum_all()) + (&g.2 * &d.2).sum_all()
            })(&t)
        };
        let (hf, hc) = (hvp(true), hvp(false));
        for (name, f, c) in [("q", &hf.0, &hc.0), ("k", &hf.1, &hc.1), ("v", &hf.2, &hc.2)] {
            close(&format!("hvp {name} causal {causal}"), f, c);
        }
        // Forward mode, and forward over reverse.
        let (_, jf) = nb::jvp(|t: &Qkv| attention(t, causal, true), &t, &dirs);
        let (_, jc) = nb::jvp(|t: &Qkv| attention(t, causal, false), &t, &dirs);
        close(&format!("jvp causal {causal}"), &jf, &jc);
        let fwd_rev = |fused: bool| nb::jvp(|t: &Qkv| nb::grad(loss(causal, fused))(t), &t, &dirs).1;
        let (ff, fc) = (fwd_rev(true), fwd_rev(false));
        close(&format!("forward over reverse dq causal {causal}"), &ff.0, &fc.0);
        close(&format!("forward over reverse dk causal {causal}"), &ff.1, &fc.1);
        close(&format!("forward over reverse dv causal {causal}"), &ff.2, &fc.2);
        // vmap of the queries alone over a new leading axis, and of everything.
        let (k, v) = (t.1.clone(), t.2.clone());
        let qs = nb::stack(&[t.0.clone(), dirs.0.clone(), &t.0 - &dirs.0], 0);
        let mapped = nb::vmap(|q: &Tensor| attention(&(q.clone(), k.clone(), v.clone()), causal, true))(&qs);
        let looped: Vec<Tensor> = (0..3)
            .map(|i| attention(&(qs.index_axis(0, i), k.clone(), v.clone()), causal, false))
            .collect();
        close(&format!("vmap of q causal {causal}"), &mapped, &nb::stack(&looped, 0));
        // vmap of the keys and values alone (the queries shared).
        let q = t.0.clone();
        let kvs = (
            nb::stack(&[t.1.clone(), dirs.1.clone()], 0),
            nb::stack(&[t.2.clone(), dirs.2.clone()], 0),
        );
        let kv_mapped =
            nb::vmap(|kv: &(Tensor, Tensor)| attention(&(q.clone(), kv.0.clone(), kv.1.clone()), causal, true))(&kvs);
        let kv_looped: Vec<Tensor> = (0..2)
            .map(|i| {
                attention(
                    &(q.clone(), kvs.0.index_axis(0, i), kvs.1.index_axis(0, i)),
                    causal,
                    false,
                )
            })
            .collect();
        close(
            &format!("vmap of k, v causal {causal}"),
            &kv_mapped,
            &nb::stack(&kv_looped, 0),
        );
        // jacrev: a vmapped cotangent over unbatched operands.
        let small_q = t.0.index_axis(0, 0).slice_axis(0, Some(0), Some(5), 1);
        let jac = |fused: bool| {
            let (k, v) = (t.1.index_axis(0, 0), t.2.index_axis(0, 0));
            nb::jacrev(move |q: &Tensor| attention(&(q.clone(), k.clone(), v.clone()), causal, fused).flatten())(
                &small_q,
            )
        };
        close(&format!("jacrev causal {causal}"), &jac(true), &jac(false));
        let per_example = nb::vmap(nb::grad(loss(causal, true)))(&t);
        let per_example_composed = nb::vmap(nb::grad(loss(causal, false)))(&t);
        close(
            &format!("vmap of grad causal {causal}"),
            &per_example.0,
            &per_example_composed.0,
        );
        // jit: recorded once, replayed on new inputs.
        let step = nb::jit(nb::grad(loss(causal, true)));
        let first = step(&t);
        let replay = step(&dirs);
        close(
            &format!("jit record causal {causal}"),
            &first.0,
            &nb::grad(loss(causal, false))(&t).0,
        );
        close(
            &format!("jit replay causal {causal}"),
            &replay.1,
            &nb::grad(loss(causal, false))(&dirs).1,
        );
    }
}

#[test]
fn the_fused_attention_is_one_primitive_each_way() {
    let t = [
        tensor(&[1, 6, 4], 31, DType::F32),
        tensor(&[1, 6, 4], 32, DType::F32),
        tensor(&[1, 6, 4], 33, DType::F32),
    ];
    let graph = nb::trace_graph(
        |xs| {
            let t = (xs[0].clone(), xs[1].clone(), xs[2].clone());
            vec![nb::grad(loss(true, true))(&t).0]
        },
        &t,
    );
    assert!(graph.contains("attention(causal=true)"), "{graph}");
    assert!(graph.contains("attention_backward(causal=true)"), "{graph}");
    for absent in ["matmul", "softmax", "where"] {
        assert!(!graph.contains(absent), "no {absent} in the fused attention: {graph}");
    }
}

#[test]
fn masks_go_through_the_fused_primitive() {
    // Fewer queries than keys, and more (a last block of 2 queries).
    for (lq, lk) in [(70, 90), (130, 50)] {
        // Key padding ([batch, 1, 1, Lk]: the second sequence keeps its first 40 keys), and an
        // arbitrary [Lq, Lk] mask that keeps key 0 for every query.
        let padding: Vec<f64> = (0..2 * lk)
            .map(|i| if i / lk == 1 && i % lk >= 40 { 0.0 } else { 1.0 })
            .collect();
        let padding = Tensor::from_vec(padding, &[2, 1, 1, lk]).gt_scalar(0.5);
        let arbitrary: Vec<f64> = inputs(lq * lk, 44)
            .iter()
            .enumerate()
            .map(|(i, &x)| if i % lk == 0 || x > -0.3 { 1.0 } else { 0.0 })
            .collect();
        let arbitrary = Tensor::from_vec(arbitrary, &[lq, lk]).gt_scalar(0.5);
        // The same mask read through a transposed view (strided rows), and a mask broadcast along
        // the keys (one value per query row).
        let columns = arbitrary.swap_axes(0, 1).logical_not().logical_not();
        let transposed = columns.swap_axes(0, 1);
        let per_query = Tensor::ones(&[lq, 1], DType::F32).gt_scalar(0.5);
        // Trailing keys dropped per query (query i keeps keys 0..10 + i % 7), so each block of
        // queries reads only up to its last kept key; and a padded batch whose second sequence
        // keeps no key at all (every block of it reads one key, dropped).
        let trailing: Vec<f64> = (0..lq * lk)
            .map(|e| if e % lk < 10 + (e / lk) % 7 { 1.0 } else { 0.0 })
            .collect();
        let trailing = Tensor::from_vec(trailing, &[lq, lk]).gt_scalar(0.5);
        let empty: Vec<f64> = (0..2 * lk).map(|i| if i < lk { 1.0 } else { 0.0 }).collect();
        let empty = Tensor::from_vec(empty, &[2, 1, 1, lk]).gt_scalar(0.5);
        // Leading keys dropped: a left-padded batch (the second sequence drops its first 30
        // keys; causal, its first 30 queries keep none), and a window per query (query i keeps
        // keys 5 + i % 7 .. lk - 3), so each block reads only from its first kept key.
        let left: Vec<f64> = (0..2 * lk)
            .map(|i| if i / lk == 1 && i % lk < 30 { 0.0 } else { 1.0 })
            .collect();
        let left = Tensor::from_vec(left, &[2, 1, 1, lk]).gt_scalar(0.5);
        let window: Vec<f64> = (0..lq * lk)
            .map(|e| {
                if e % lk >= 5 + (e / lk) % 7 && e % lk < lk - 3 {
                    1.0
                } else {
                    0.0
                }
            })
            .collect();
        let window = Tensor::from_vec(window, &[lq, lk]).gt_scalar(0.5);
        for dtype in [DType::F64, DType::F32] {
            let t = (
                tensor(&[2, 3, lq, 16], 41, dtype),
                tensor(&[2, 3, lk, 16], 42, dtype),
                tensor(&[2, 3, lk, 8], 43, dtype),
            );
            for causal in [false, true] {
                let masks = [
                    ("padding", &padding),
                    ("arbitrary", &arbitrary),
                    ("transposed", &transposed),
                    ("per-query", &per_query),
                    ("trailing", &trailing),
                    ("empty sequence", &empty),
                    ("left padding", &left),
                    ("window", &window),
                ];
                for (name, mask) in masks {
                    agree_masked(&format!("{dtype} {name} mask causal {causal}"), &t, Some(mask), causal);
                }
            }
        }
    }
    // One primitive each way, no select.
    let t = [
        tensor(&[1, 6, 4], 45, DType::F32),
        tensor(&[1, 6, 4], 46, DType::F32),
        tensor(&[1, 6, 4], 47, DType::F32),
    ];
    let keep = Tensor::from_vec(vec![1.0, 1.0, 0.0, 1.0, 1.0, 0.0], &[6]).gt_scalar(0.5);
    let graph = nb::trace_graph(
        |xs| {
            let t = (xs[0].clone(), xs[1].clone(), xs[2].clone());
            vec![nb::grad(|t: &Qkv| masked_attention(t, Some(&keep), false, true).square().sum_all())(&t).0]
        },
        &t,
    );
    assert!(graph.contains("attention_backward(causal=false)"), "{graph}");
    assert!(!graph.contains("where") && !graph.contains("softmax"), "{graph}");
    // Under jit, a masked step replays with the mask as recorded.
    let step =
        nb::jit(|t: &Qkv| nb::grad(|t: &Qkv| masked_attention(t, Some(&keep), true, true).square().sum_all())(t));
    let a = (t[0].clone(), t[1].clone(), t[2].clone());
    let b = (t[1].clone(), t[2].clone(), t[0].clone());
    let reference = |t: &Qkv| nb::grad(|t: &Qkv| masked_attention(t, Some(&keep), true, false).square().sum_all())(t);
    close("masked jit record", &step(&a).1, &reference(&a).1);
    close("masked jit replay", &step(&b).0, &reference(&b).0);
}

#[test]
fn a_query_that_keeps_no_key_attends_to_nothing_and_passes_no_gradient() {
    let (lq, lk) = (5, 6);
    // Query 2 keeps no key: through a full [Lq, Lk] mask (its row false); through a mask of
    // one value per query, broadcast along the keys; and causally, with the mask dropping the
    // keys 0..=2 it sees (keys past 2 are kept by the mask, dropped by causality). Queries
    // across a block boundary as well (query 70 of 130 keeps no key).
    let mask = |keeps: &dyn Fn(usize, usize) -> bool, shape: &[usize]| {
        let n: usize = shape.iter().product();
        let cols = shape[1];
        let values = (0..n)
            .map(|e| if keeps(e / cols, e % cols) { 1.0 } else { 0.0 })
            .collect();
        Tensor::from_vec(values, shape).gt_scalar(0.5)
    };
    let cases = [
        ("full row", lq, mask(&|i, _| i != 2, &[lq, lk]), false, 2),
        ("per query", lq, mask(&|i, _| i != 2, &[lq, 1]), false, 2),
        ("causal", lq, mask(&|i, j| i != 2 || j > 2, &[lq, lk]), true, 2),
        ("second block", 130, mask(&|i, _| i != 70, &[130, 1]), true, 70),
    ];
    for (name, lq, keep, causal, empty) in &cases {
        let t = (
            tensor(&[2, *lq, 4], 51, DType::F64),
            tensor(&[2, lk, 4], 52, DType::F64),
            tensor(&[2, lk, 3], 53, DType::F64),
        );
        agree_masked(name, &t, Some(keep), *causal);
        let out = masked_attention(&t, Some(keep), *causal, true).to_vec::<f64>();
        let row = |x: &[f64], b: usize, width: usize| x[(b * lq + empty) * width..][..width].to_vec();
        for b in 0..2 {
            assert_eq!(row(&out, b, 3), [0.0; 3], "{name}: the empty query's output");
        }
        let g = nb::grad(|t: &Qkv| masked_attention(t, Some(keep), *causal, true).sin().sum_all())(&t);
        let dq = g.0.to_vec::<f64>();
        assert_eq!(row(&dq, 1, 4), [0.0; 4], "{name}: the empty query's gradient");
        for (part, x) in [("dq", &g.0), ("dk", &g.1), ("dv", &g.2)] {
            assert!(x.to_vec::<f64>().iter().all(|x| x.is_finite()), "{name}: {part}: {x}");
        }
    }
}

#[test]
fn bad_operands_get_messages_that_name_the_op_and_what_to_do() {
    let q = tensor(&[2, 5, 4], 61, DType::F32);
    let k = tensor(&[2, 6, 4], 62, DType::F32);
    let v = tensor(&[2, 6, 3], 63, DType::F32);
    let sdpa = |q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>| {
        common::panic_message(|| {
            nb::scaled_dot_product_attention(q, k, v, mask, false);
        })
    };
    let msg = sdpa(&q, &k.cast(DType::F64), &v, None);
    assert!(
        msg.contains("scaled_dot_product_attention: dtypes differ") && msg.contains("f64") && msg.contains("cast one"),
        "{msg}"
    );
    let msg = sdpa(&q, &k, &v, Some(&Tensor::ones(&[5, 6], DType::F32)));
    assert!(msg.contains("the mask must be bool") && msg.contains("[5, 6]"), "{msg}");
    let msg = sdpa(&q, &k, &v, Some(&Tensor::ones(&[6, 5], DType::F32).gt_scalar(0.5)));
    assert!(
        msg.contains("a mask of shape [6, 5] does not broadcast to the scores [2, 5, 6]"),
        "{msg}"
    );
    let msg = sdpa(&q, &k, &v, Some(&Tensor::ones(&[3, 5, 6], DType::F32).gt_scalar(0.5)));
    assert!(
        msg.contains("a mask of shape [3, 5, 6] does not broadcast to the scores [2, 5, 6]"),
        "{msg}"
    );
    let msg = sdpa(&q, &tensor(&[2, 6, 3], 64, DType::F32), &v, None);
    assert!(msg.contains("do not fit"), "{msg}");
    let msg = sdpa(&q, &tensor(&[3, 6, 4], 65, DType::F32), &v, None);
    assert!(
        msg.contains("leading (batch) axes of q [2, 5, 4], k [3, 6, 4]"),
        "{msg}"
    );
}

#[test]
fn half_attention_computes_in_f32_through_the_fused_primitive() {
    let keep = Tensor::from_vec(vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0], &[8]).gt_scalar(0.5);
    for half in [DType::BF16, DType::F16] {
        let t = [
            tensor(&[2, 70, 16], 71, half),
            tensor(&[2, 8, 16], 72, half),
            tensor(&[2, 8, 16], 73, half),
        ];
        let (q, k, v) = (&t[0], &t[1], &t[2]);
        let wide = |x: &Tensor| x.cast(DType::F32);
        for mask in [None, Some(&keep)] {
            let got = nb::scaled_dot_product_attention(q, k, v, mask, true);
            assert_eq!(got.dtype(), half);
            // The f32 attention of the same values, rounded once.
            let want = nb::scaled_dot_product_attention(&wide(q), &wide(k), &wide(v), mask, true).cast(half);
            assert_eq!(
                got.to_vec::<f64>(),
                want.to_vec::<f64>(),
                "{half} mask {}",
                mask.is_some()
            );
        }
        let graph = nb::trace_graph(
            |xs| {
                let t = (xs[0].clone(), xs[1].clone(), xs[2].clone());
                let g = nb::grad(|t: &Qkv| masked_attention(t, Some(&keep), true, true).cast(DType::F32).sum_all())(&t);
                assert_eq!((g.0.dtype(), g.1.dtype(), g.2.dtype()), (half, half, half));
                vec![g.0, g.1, g.2]
            },
            &t,
        );
        assert!(graph.contains("attention_backward(causal=true)"), "{graph}");
        assert!(!graph.contains("softmax"), "{graph}");
    }
}
