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
    // A `[total, n]` block made where the leaf lives, never the whole `[total, total]` identity.
    Tensor::identity_columns(total, offset, n, dtype, like.device()).reshape(shape)
}

/// A function of leaves returning several outputs and an auxiliary value.
pub(crate) type TracedFn<'a, X> = &'a dyn Fn(&[Tensor]) -> (Vec<Tensor>, X);

/// Forward-mode Jacobians `d outs[j] / d primals[i]` for every output `j` of `f` and `i` in
/// `wrt`: `result[j][k]` has shape `outs[j].shape ++ primals[wrt[k]].shape`. The function is
/// traced once for all outputs. Also returns the auxiliary output.
pub(crate) fn jacfwd_leaves<X: Tree>(f: TracedFn<X>, primals: &[Tensor], wrt: &[usize]) -> (Vec<Vec<Tensor>>, X) {
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
    let out_shapes: RefCell<Vec<Vec<usize>>> = RefCell::new(vec![]);
    let t = vmap_many(
        |ts| {
            let (_, touts) = jvp_many(
                |leaves| {
                    let (os, a) = g(leaves);
                    *out_shapes.borrow_mut() = os.iter().map(|o| o.shape().to_vec()).collect();
                    *aux.borrow_mut() = Some(a);
                    os
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
    let jacs = out_shapes
        .into_inner()
        .iter()
        .zip(&t)
        .map(|(out_shape, tj)| {
            let mut offset = 0;
            xs.iter()
                .map(|x| {
                    let n = x.numel();
                    let block = tj.slice_axis(0, Some(offset as isize), Some((offset + n) as isize), 1);
                    offset += n;
                    let mut shape = out_shape.clone();
                    shape.extend_from_slice(x.shape());
                    block.moveaxis(0, -1).reshape(shape)
                })
                .collect()
        })
        .collect();
    (
        jacs,
        aux.into_inner().expect("the function ran").map_leaves(release_finished),
    )
}

/// Reverse-mode Jacobians, as [`jacfwd_leaves`]: one trace, and one batched pullback over the
/// basis cotangents of all outputs together.
pub(crate) fn jacrev_leaves<X: Tree>(f: TracedFn<X>, primals: &[Tensor], wrt: &[usize]) -> (Vec<Vec<Tensor>>, X) {
    let g = partial(f, primals, wrt);
    let xs: Vec<Tensor> = wrt.iter().map(|&i| primals[i].clone()).collect();
    let mut aux = None;
    let (outs, pullback) = vjp_many(
        |leaves| {
            let (os, a) = g(leaves);
            aux = Some(a);
            os
        },
        &xs,
    );
    let total: usize = outs.iter().map(|o| o.numel()).sum();
    let mut offset = 0;
    let cts: Vec<Tensor> = outs
        .iter()
        .map(|o| {
            let b = basis(total, offset, o);
            offset += o.numel();
            b
        })
        .collect();
    let rows = vmap_many(|c| pullback.call(c), &cts, &vec![Some(0); cts.len()], &[0]);
    let mut offset = 0;
    let jacs = outs
        .iter()
        .map(|o| {
            let m = o.numel();
            let block: Vec<Tensor> = rows
                .iter()
                .zip(&xs)
                .map(|(r, x)| {
                    let mut shape = o.shape().to_vec();
                    shape.extend_from_slice(x.shape());
                    r.slice_axis(0, Some(offset as isize), Some((offset + m) as isize), 1)
                        .reshape(shape)
                })
                .collect();
            offset += m;
            block
        })
        .collect();
    (jacs, aux.expect("the function ran").map_leaves(release_finished))
}

/// A function computing Jacobian blocks (`[output][leaf]`) of `f` at primals with respect to
/// the listed leaves.
pub(crate) type JacobianEngine<X> = fn(TracedFn<X>, &[Tensor], &[usize]) -> (Vec<Vec<Tensor>>, X);

/// Jacobians of a pytree-valued `f` of a pytree: one tree shaped like the argument per output
/// leaf (in the output's leaf order).
fn typed_multi<A: Tree, B: Tree, X: Tree>(
    f: impl Fn(&A) -> (B, X),
    engine: JacobianEngine<X>,
) -> impl Fn(&A) -> (Vec<A>, X) {
    move |x: &A| {
        let leaves = x.leaves();
        super::api::require_float_leaves("jacobian", &leaves, false);
        let wrt: Vec<usize> = (0..leaves.len()).collect();
        let h = |ls: &[Tensor]| {
            let (b, aux) = f(&x.rebuild(ls.to_vec()));
            (b.leaves(), aux)
        };
        let (jacs, aux) = engine(&h, &leaves, &wrt);
        (jacs.into_iter().map(|per_leaf| x.rebuild(per_leaf)).collect(), aux)
    }
}

fn typed<A: Tree, X: Tree>(f: impl Fn(&A) -> (Tensor, X), engine: JacobianEngine<X>) -> impl Fn(&A) -> (A, X) {
    let j = typed_multi(f, engine);
    move |x: &A| {
        let (mut jacs, aux) = j(x);
        (jacs.swap_remove(0), aux)
    }
}

/// Forward-mode Jacobian of a pytree-valued `f` (JAX's `jacfwd` of a function with several
/// outputs): for every output leaf, in the output's leaf order, a tree shaped like the argument
/// whose leaves have shape `out_leaf.shape ++ arg_leaf.shape`. `f` is traced once for all
/// outputs.
pub fn jacfwd_multi<A: Tree, B: Tree>(f: impl Fn(&A) -> B) -> impl Fn(&A) -> Vec<A> {
    let j = typed_multi(move |a: &A| (f(a), ()), jacfwd_leaves::<()>);
    move |x: &A| j(x).0
}

/// Reverse-mode Jacobian of a pytree-valued `f` (see [`jacfwd_multi`]).
pub fn jacrev_multi<A: Tree, B: Tree>(f: impl Fn(&A) -> B) -> impl Fn(&A) -> Vec<A> {
    let j = typed_multi(move |a: &A| (f(a), ()), jacrev_leaves::<()>);
    move |x: &A| j(x).0
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

/// The Hessian of a scalar-valued `f` of any pytree (JAX's `hessian` of a pytree argument):
/// `h[i]` is a tree shaped like the argument whose leaf `j` is the block
/// `d^2 f / d leaf_i d leaf_j`, of shape `leaf_i.shape ++ leaf_j.shape`.
pub fn hessian_tree<A: Tree>(f: impl Fn(&A) -> Tensor) -> impl Fn(&A) -> Vec<A> {
    jacfwd_multi(jacrev(f))
}
