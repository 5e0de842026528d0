//! Jacobians: `jacfwd` is vmap over `jvp` with the basis tangents (the function is traced once,
//! only the tangent sweep is batched); `jacrev` traces once with `vjp` and vmaps the pullback
//! over the basis cotangents. Neither loops over single passes.

use std::cell::RefCell;

use super::jvp::jvp_many;
use super::release_finished;
use super::vjp::vjp_many;
use super::vmap::vmap_many;
use crate::dtype::DType;
use crate::tensor::Tensor;
use crate::tree::Tree;

/// `f` as a function of the leaves `wrt` of `primals` only (the others held fixed).
fn partial<'a, O>(
    f: &'a dyn Fn(&[Tensor]) -> O,
    primals: &'a [Tensor],
    wrt: &'a [usize],
) -> impl Fn(&[Tensor]) -> O + 'a {
    move |xs: &[Tensor]| {
        let mut all = primals.to_vec();
        for (k, &i) in wrt.iter().enumerate() {
            all[i] = xs[k].clone();
        }
        f(&all)
    }
}

/// Rows of the identity of size `total` for the block `offset..offset + n` of one leaf, shaped
/// `[total, leaf shape]`.
fn basis(total: usize, offset: usize, like: &Tensor) -> Tensor {
    let n = like.numel();
    let mut shape = vec![total];
    shape.extend_from_slice(like.shape());
    let dtype = if like.dtype().is_float() {
        like.dtype()
    } else {
        DType::F32
    };
    Tensor::eye(total, dtype)
        .slice_axis(1, Some(offset as isize), Some((offset + n) as isize), 1)
        .reshape(shape)
}

/// Forward-mode Jacobians `d out / d primals[i]` for `i` in `wrt`, each of shape
/// `out.shape ++ primals[i].shape`, and the auxiliary output.
pub(crate) fn jacfwd_leaves<X: Tree>(
    f: &dyn Fn(&[Tensor]) -> (Tensor, X),
    primals: &[Tensor],
    wrt: &[usize],
) -> (Vec<Tensor>, X) {
    let g = partial(f, primals, wrt);
    let xs: Vec<Tensor> = wrt.iter().map(|&i| primals[i].clone()).collect();
    let total: usize = xs.iter().map(|x| x.numel()).sum();
    let mut offset = 0;
    let tangents: Vec<Tensor> = xs
        .iter()
        .map(|x| {
            let b = basis(total, offset, x);
            offset += x.numel();
            b
        })
        .collect();
    let aux: RefCell<Option<X>> = RefCell::new(None);
    let out_shape: RefCell<Vec<usize>> = RefCell::new(vec![]);
    let t = vmap_many(
        |ts| {
            let (_, touts) = jvp_many(
                |leaves| {
                    let (o, a) = g(leaves);
                    *out_shape.borrow_mut() = o.shape().to_vec();
                    *aux.borrow_mut() = Some(a);
                    vec![o]
                },
                &xs,
                ts,
            );
            touts
        },
        &tangents,
        &vec![Some(0); tangents.len()],
        &[0],
    );
    let out_shape = out_shape.into_inner();
    let mut offset = 0;
    let jacs = xs
        .iter()
        .map(|x| {
            let n = x.numel();
            let block = t[0].slice_axis(0, Some(offset as isize), Some((offset + n) as isize), 1);
            offset += n;
            let mut shape = out_shape.clone();
            shape.extend_from_slice(x.shape());
            block.moveaxis(0, -1).reshape(shape)
        })
        .collect();
    (
        jacs,
        aux.into_inner().expect("the function ran").map_leaves(release_finished),
    )
}

/// Reverse-mode Jacobians, as [`jacfwd_leaves`].
pub(crate) fn jacrev_leaves<X: Tree>(
    f: &dyn Fn(&[Tensor]) -> (Tensor, X),
    primals: &[Tensor],
    wrt: &[usize],
) -> (Vec<Tensor>, X) {
    let g = partial(f, primals, wrt);
    let xs: Vec<Tensor> = wrt.iter().map(|&i| primals[i].clone()).collect();
    let mut aux = None;
    let (outs, pullback) = vjp_many(
        |leaves| {
            let (o, a) = g(leaves);
            aux = Some(a);
            vec![o]
        },
        &xs,
    );
    let out = &outs[0];
    let m = out.numel();
    let mut ct_shape = vec![m];
    ct_shape.extend_from_slice(out.shape());
    let cts = Tensor::eye(m, out.dtype()).reshape(ct_shape);
    let rows = vmap_many(|c| pullback.call(c), &[cts], &[Some(0)], &[0]);
    let jacs = rows
        .iter()
        .zip(&xs)
        .map(|(r, x)| {
            let mut shape = out.shape().to_vec();
            shape.extend_from_slice(x.shape());
            r.reshape(shape)
        })
        .collect();
    (jacs, aux.expect("the function ran").map_leaves(release_finished))
}

/// A function computing Jacobian blocks of `f` at primals with respect to the listed leaves.
pub(crate) type JacobianEngine<X> = fn(&dyn Fn(&[Tensor]) -> (Tensor, X), &[Tensor], &[usize]) -> (Vec<Tensor>, X);

fn typed<A: Tree, X: Tree>(f: impl Fn(&A) -> (Tensor, X), engine: JacobianEngine<X>) -> impl Fn(&A) -> (A, X) {
    move |x: &A| {
        let leaves = x.leaves();
        super::api::require_float_leaves("jacobian", &leaves, false);
        let wrt: Vec<usize> = (0..leaves.len()).collect();
        let h = |ls: &[Tensor]| f(&x.rebuild(ls.to_vec()));
        let (jacs, aux) = engine(&h, &leaves, &wrt);
        (x.rebuild(jacs), aux)
    }
}

/// Forward-mode Jacobian of a tensor-valued `f`: for every leaf of the argument, a tensor of
/// shape `out.shape ++ leaf.shape`, in the argument's structure.
pub fn jacfwd<A: Tree>(f: impl Fn(&A) -> Tensor) -> impl Fn(&A) -> A {
    let j = typed(move |a: &A| (f(a), ()), jacfwd_leaves::<()>);
    move |x: &A| j(x).0
}

/// Reverse-mode Jacobian of a tensor-valued `f` (see [`jacfwd`] for the result's layout).
pub fn jacrev<A: Tree>(f: impl Fn(&A) -> Tensor) -> impl Fn(&A) -> A {
    let j = typed(move |a: &A| (f(a), ()), jacrev_leaves::<()>);
    move |x: &A| j(x).0
}

/// [`jacfwd`] of a function returning `(output, aux)`: gives `(jacobian, aux)`.
pub fn jacfwd_with_aux<A: Tree, X: Tree>(f: impl Fn(&A) -> (Tensor, X)) -> impl Fn(&A) -> (A, X) {
    typed(f, jacfwd_leaves::<X>)
}

/// [`jacrev`] of a function returning `(output, aux)`: gives `(jacobian, aux)`.
pub fn jacrev_with_aux<A: Tree, X: Tree>(f: impl Fn(&A) -> (Tensor, X)) -> impl Fn(&A) -> (A, X) {
    typed(f, jacrev_leaves::<X>)
}

/// The Hessian of a scalar-valued `f` of one tensor: `jacfwd(jacrev(f))`, shape
/// `x.shape ++ x.shape`.
pub fn hessian(f: impl Fn(&Tensor) -> Tensor) -> impl Fn(&Tensor) -> Tensor {
    jacfwd(jacrev(f))
}
