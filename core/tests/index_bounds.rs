//! Every index op rejects an out-of-range index with the op, the index and the extent in the
//! message, eagerly, under vmap and on a jit replay; in-range negative indices count from the end.

use nabla_core::{DType, Tensor, one_hot};

fn panic_message(f: impl FnOnce() -> Tensor) -> String {
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).expect_err("should panic");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

fn x() -> Tensor {
    Tensor::from_vec((0..6).map(|v| v as f64).collect::<Vec<_>>(), &[2, 3])
}

fn idx(v: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape)
}

#[test]
fn take_along_axis_rejects_the_index_that_used_to_read_the_neighbouring_row() {
    let m = panic_message(|| x().take_along_axis(&idx(&[3, 0], &[2, 1]), 1));
    assert!(
        m.contains("take_along_axis: index 3 is out of range for axis 1 of extent 3"),
        "{m}"
    );
    let m = panic_message(|| x().take_along_axis(&idx(&[0, -4], &[2, 1]), 1));
    assert!(
        m.contains("take_along_axis: index -4 is out of range for axis 1 of extent 3"),
        "{m}"
    );
    // In range, negatives count from the end, per row.
    let got = x().take_along_axis(&idx(&[-1, 0], &[2, 1]), 1);
    assert_eq!(got.to_vec::<f64>(), vec![2.0, 3.0]);
    let got = x().take_along_axis(&idx(&[1, 0, 1], &[1, 3]), 0);
    assert_eq!(got.to_vec::<f64>(), vec![3.0, 1.0, 5.0]);
}

#[test]
fn take_scatter_add_and_one_hot_reject_out_of_range_indices() {
    let m = panic_message(|| x().take(&idx(&[0, 2], &[2]), 0));
    assert!(
        m.contains("take: index 2 is out of range for axis 0 of extent 2"),
        "{m}"
    );
    let m = panic_message(|| x().scatter_add(&idx(&[-3], &[1]), &Tensor::ones(&[1, 3], DType::F64), 0));
    assert!(
        m.contains("scatter_add: index -3 is out of range for axis 0 of extent 2"),
        "{m}"
    );
    let m = panic_message(|| one_hot(&idx(&[0, 3], &[2]), 3, DType::F32));
    assert!(
        m.contains("one_hot: index 3 is out of range") && m.contains("accepted: 0 ..= 2"),
        "{m}"
    );
    let m = panic_message(|| one_hot(&idx(&[-1], &[1]), 3, DType::F32));
    assert!(m.contains("one_hot: index -1 is out of range"), "{m}");
    assert_eq!(
        one_hot(&idx(&[2, 0], &[2]), 3, DType::F64).to_vec::<f64>(),
        vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    );
}

#[test]
fn cross_entropy_with_a_bad_label_and_vmapped_take_along_axis_are_checked() {
    let logits = Tensor::zeros(&[2, 3], DType::F32);
    let m = panic_message(|| nabla_core::cross_entropy(&logits, &idx(&[1, 3], &[2])));
    assert!(m.contains("index 3 is out of range for axis 1 of extent 3"), "{m}");
    // Under vmap: each example's indices are checked against the axis, not rows x n.
    let xs = Tensor::from_vec((0..12).map(|v| v as f64).collect::<Vec<_>>(), &[2, 2, 3]);
    let ok = nabla_core::vmap_many(
        |a| vec![a[0].take_along_axis(&a[1], 1)],
        &[xs.clone(), idx(&[2, -1, 0, 1], &[2, 2, 1])],
        &[Some(0), Some(0)],
        &[0],
    );
    assert_eq!(ok[0].to_vec::<f64>(), vec![2.0, 5.0, 6.0, 10.0]);
    let m = panic_message(|| {
        nabla_core::vmap_many(
            |a| vec![a[0].take_along_axis(&a[1], 1)],
            &[xs.clone(), idx(&[0, 0, 0, 3], &[2, 2, 1])],
            &[Some(0), Some(0)],
            &[0],
        )[0]
        .clone()
    });
    assert!(m.contains("take_along_axis: index 3 is out of range"), "{m}");
}

#[test]
fn a_jit_replay_checks_each_new_batch_of_indices() {
    let f = nabla_core::Jit::new(|(x, i): &(Tensor, Tensor)| x.take_along_axis(i, 1));
    let good = f.call(&(x(), idx(&[0, 2], &[2, 1])));
    assert_eq!(good.to_vec::<f64>(), vec![0.0, 5.0]);
    let again = f.call(&(x(), idx(&[1, -1], &[2, 1])));
    assert_eq!(again.to_vec::<f64>(), vec![1.0, 5.0]);
    assert_eq!(f.cache_info().replays, 1);
    let m = panic_message(|| f.call(&(x(), idx(&[0, 3], &[2, 1]))));
    assert!(m.contains("take_along_axis: index 3 is out of range"), "{m}");
}

#[test]
fn indices_that_are_views_at_an_offset_are_read_at_that_offset() {
    // A regression: the checked indices lost their view's offset (cross-entropy on a slice of
    // the labels read the first labels of the buffer instead).
    let x = Tensor::from_vec((0..12).map(|v| v as f32).collect::<Vec<_>>(), &[4, 3]);
    let labels = idx(&[0, 1, 2, 1, 0, 2], &[6]);
    let view = labels.slice_axis(0, Some(2), Some(6), 1);
    let copy = idx(&view.to_vec::<i64>(), &[4]);
    assert_eq!(
        x.take_along_axis(&view.expand_dims(-1), -1).to_vec::<f32>(),
        vec![2.0, 4.0, 6.0, 11.0]
    );
    assert_eq!(
        one_hot(&view, 3, DType::F32).to_vec::<f32>(),
        one_hot(&copy, 3, DType::F32).to_vec::<f32>()
    );
    let g_view = nabla_core::grad(|x: &Tensor| nabla_core::cross_entropy(x, &view))(&x);
    let g_copy = nabla_core::grad(|x: &Tensor| nabla_core::cross_entropy(x, &copy))(&x);
    assert_eq!(g_view.to_vec::<f32>(), g_copy.to_vec::<f32>());
}

#[test]
fn jit_replays_index_views_at_an_offset_whether_or_not_indices_wrap() {
    // The checked indices must not depend on whether the recorded call had negative indices.
    let f = nabla_core::Jit::new(|(x, i): &(Tensor, Tensor)| x.take(&i.slice_axis(0, Some(2), None, 1), 1));
    let x = Tensor::from_vec((0..6).map(|v| v as f64).collect::<Vec<_>>(), &[2, 3]);
    let a = f.call(&(x.clone(), idx(&[9, 9, 0, 2], &[4])));
    assert_eq!(a.to_vec::<f64>(), vec![0.0, 2.0, 3.0, 5.0]);
    let b = f.call(&(x.clone(), idx(&[9, 9, -1, 1], &[4])));
    assert_eq!(b.to_vec::<f64>(), vec![2.0, 1.0, 5.0, 4.0]);
    let g = nabla_core::Jit::new(|(x, i): &(Tensor, Tensor)| x.take(&i.slice_axis(0, Some(2), None, 1), 1));
    let c = g.call(&(x.clone(), idx(&[9, 9, -1, 0], &[4])));
    assert_eq!(c.to_vec::<f64>(), vec![2.0, 0.0, 5.0, 3.0]);
    let d = g.call(&(x, idx(&[7, 7, 1, 2], &[4])));
    assert_eq!(d.to_vec::<f64>(), vec![1.0, 2.0, 4.0, 5.0]);
    assert_eq!(f.cache_info().replays + g.cache_info().replays, 2);
}
