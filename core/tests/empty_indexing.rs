//! Indexing over empty extents: a take or scatter_add over a tensor with a zero-size axis
//! (before or after the indexed one), or with no indices, returns the empty result of the
//! right shape, and its derivatives are empty too.

use nabla_core::{Tensor, grad};

fn idx(v: &[i64], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape)
}

fn empty(shape: &[usize]) -> Tensor {
    Tensor::from_vec(Vec::<f64>::new(), shape)
}

#[test]
fn take_over_an_empty_trailing_axis_is_empty() {
    let x = empty(&[3, 0]);
    let got = x.take(&idx(&[2, 0, 1, -1], &[2, 2]), 0);
    assert_eq!(got.shape(), &[2, 2, 0]);
    assert!(got.to_vec::<f64>().is_empty());
    let g = grad(|x: &Tensor| x.take(&idx(&[2, 0], &[2]), 0).sum_all())(&x);
    assert_eq!(g.shape(), &[3, 0]);
}

#[test]
fn take_over_an_empty_leading_axis_is_empty() {
    let x = empty(&[0, 3]);
    let got = x.take(&idx(&[2, 0], &[2]), 1);
    assert_eq!(got.shape(), &[0, 2]);
    let g = grad(|x: &Tensor| x.take(&idx(&[2, 0], &[2]), 1).sum_all())(&x);
    assert_eq!(g.shape(), &[0, 3]);
}

#[test]
fn take_of_no_indices_is_empty_and_its_gradient_is_zero() {
    let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3]);
    let got = x.take(&idx(&[], &[0]), 1);
    assert_eq!(got.shape(), &[2, 0]);
    let g = grad(|x: &Tensor| x.take(&idx(&[], &[0]), 1).sum_all())(&x);
    assert_eq!(g.to_vec::<f64>(), vec![0.0; 6]);
}

#[test]
fn scatter_add_over_an_empty_trailing_axis_is_empty() {
    let x = empty(&[3, 0]);
    let got = x.scatter_add(&idx(&[1, 1], &[2]), &empty(&[2, 0]), 0);
    assert_eq!(got.shape(), &[3, 0]);
    let g = grad(|u: &Tensor| x.scatter_add(&idx(&[1, 1], &[2]), u, 0).sum_all())(&empty(&[2, 0]));
    assert_eq!(g.shape(), &[2, 0]);
}

#[test]
fn scatter_add_of_no_updates_returns_the_base() {
    let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], &[3]);
    let got = x.scatter_add(&idx(&[], &[0]), &empty(&[0]), 0);
    assert_eq!(got.to_vec::<f64>(), vec![1.0, 2.0, 3.0]);
}

#[test]
fn empty_takes_under_vmap_and_jit_keep_their_shapes() {
    let per = |x: &Tensor| x.take(&idx(&[1, 0, 1], &[3]), 0);
    let got = nabla_core::vmap(per)(&empty(&[4, 2, 0]));
    assert_eq!(got.shape(), &[4, 3, 0]);
    let f = nabla_core::Jit::new(|x: &Tensor| x.take(&idx(&[1, 0], &[2]), 0).exp());
    for _ in 0..2 {
        assert_eq!(f.call(&empty(&[3, 0])).shape(), &[2, 0]);
    }
    assert_eq!(f.cache_info().replays, 1);
}
