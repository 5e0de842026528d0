//! The typed API over pytrees: the closure takes one [`Tree`] argument (a tensor, a tuple of
//! them, a parameter struct, ...) and derivatives come back in the same structure. Multiple
//! positional arguments are a tuple; `vjp`'s pullback then returns one cotangent per element.

use super::jvp::jvp_many;
use super::release_finished;
use super::vjp::{VjpFn, require_scalar, vjp_many};
use super::vmap::vmap_many;
use crate::tensor::Tensor;
use crate::tree::Tree;

/// Panics unless every leaf of a differentiated argument is a float tensor.
pub(crate) fn require_float_leaves(op: &str, leaves: &[Tensor], allow_int: bool) {
    if allow_int {
        return;
    }
    if let Some((i, t)) = leaves.iter().enumerate().find(|(_, t)| !t.dtype().is_float()) {
        panic!(
            "{op}: input leaf {i} has dtype {} (shape {:?}); only float inputs can be differentiated. \
             Cast it, or pass allow_int: true in GradOptions to get zero gradients for it",
            t.dtype(),
            t.shape()
        );
    }
}

/// `f` as a function of the primals' leaves that returns the output's leaves and keeps the
/// output tree and aux in `captured` (transforms work on leaves; results are rebuilt from it).
fn on_leaves<'a, A: Tree, B: Tree, X>(
    f: impl FnOnce(&A) -> (B, X) + 'a,
    primals: &'a A,
    captured: &'a mut Option<(B, X)>,
) -> impl FnOnce(&[Tensor]) -> Vec<Tensor> + 'a {
    move |leaves: &[Tensor]| {
        let (out, aux) = f(&primals.rebuild(leaves.to_vec()));
        let flat = out.leaves();
        *captured = Some((out, aux));
        flat
    }
}

/// `(f(primals), pullback)`: the pullback maps a cotangent shaped like the output to
/// cotangents shaped like the primals (for a tuple of primals, one per element).
pub fn vjp<A: Tree, B: Tree, F: FnOnce(&A) -> B>(f: F, primals: &A) -> (B, impl Fn(&B) -> A + use<A, B, F>) {
    let (out, pullback, ()) = vjp_with_aux(|a| (f(a), ()), primals);
    (out, pullback)
}

/// Like [`vjp`] for a function returning `(output, aux)`: gives `(output, pullback, aux)`;
/// `aux` is not differentiated.
pub fn vjp_with_aux<A: Tree, B: Tree, X: Tree, F: FnOnce(&A) -> (B, X)>(
    f: F,
    primals: &A,
) -> (B, impl Fn(&B) -> A + use<A, B, X, F>, X) {
    let (out, pullback, aux) = vjp_tree(f, primals);
    (out, move |ct: &B| pullback.call(ct), aux)
}

/// The pullback of [`vjp_tree`]: output-shaped cotangents in, primal-shaped cotangents out.
struct TreePullback<A> {
    template: A,
    pullback: VjpFn,
    out_leaves: usize,
}

impl<A: Tree> TreePullback<A> {
    fn leaves_of<B: Tree>(&self, ct: &B) -> Vec<Tensor> {
        let cts = ct.leaves();
        if cts.len() != self.out_leaves {
            panic!(
                "vjp: the cotangent has {} leaves but the output has {}; pass one shaped like the output",
                cts.len(),
                self.out_leaves
            );
        }
        cts
    }

    fn call<B: Tree>(&self, ct: &B) -> A {
        self.template.rebuild(self.pullback.call(&self.leaves_of(ct)))
    }

    /// The last call: the graph is freed during the sweep ([`VjpFn::call_once`]).
    fn call_once<B: Tree>(self, ct: &B) -> A {
        let cts = self.leaves_of(ct);
        self.template.rebuild(self.pullback.call_once(&cts))
    }
}

/// `(output, pullback, aux)` of `f` at `primals` over pytrees.
fn vjp_tree<A: Tree, B: Tree, X: Tree>(f: impl FnOnce(&A) -> (B, X), primals: &A) -> (B, TreePullback<A>, X) {
    let leaves = primals.leaves();
    let template = primals.rebuild(leaves.clone());
    let mut captured: Option<(B, X)> = None;
    let (outs, pullback) = vjp_many(on_leaves(f, primals, &mut captured), &leaves);
    let (out_tree, aux) = captured.expect("the function ran");
    let out = out_tree.rebuild(outs);
    let aux = aux.map_leaves(release_finished);
    let out_leaves = out.leaves().len();
    let pullback = TreePullback {
        template,
        pullback,
        out_leaves,
    };
    (out, pullback, aux)
}

/// `(f(primals), J tangents)`: primals and tangents have one structure; each tangent leaf has
/// its primal's shape and dtype.
pub fn jvp<A: Tree, B: Tree>(f: impl FnOnce(&A) -> B, primals: &A, tangents: &A) -> (B, B) {
    let (o, t, ()) = jvp_with_aux(|a| (f(a), ()), primals, tangents);
    (o, t)
}

/// Like [`jvp`] for a function returning `(output, aux)`: gives `(output, tangent, aux)`.
pub fn jvp_with_aux<A: Tree, B: Tree, X: Tree>(f: impl FnOnce(&A) -> (B, X), primals: &A, tangents: &A) -> (B, B, X) {
    let (p, t) = (primals.leaves(), tangents.leaves());
    if p.len() != t.len() {
        panic!(
            "jvp: the tangents have {} leaves but the primals have {}; they must have one structure",
            t.len(),
            p.len()
        );
    }
    let mut captured: Option<(B, X)> = None;
    let (outs, touts) = jvp_many(on_leaves(f, primals, &mut captured), &p, &t);
    let (out_tree, aux) = captured.expect("the function ran");
    let tangent = out_tree.rebuild(touts);
    (out_tree.rebuild(outs), tangent, aux.map_leaves(release_finished))
}

/// `((value, aux), gradient)` of a scalar-valued `f` with auxiliary output.
pub fn value_and_grad_with_aux<A: Tree, X: Tree>(f: impl Fn(&A) -> (Tensor, X)) -> impl Fn(&A) -> ((Tensor, X), A) {
    move |x: &A| {
        require_float_leaves("grad", &x.leaves(), false);
        let (value, pullback, aux) = vjp_tree(|a| f(a), x);
        require_scalar("grad", &value);
        // The pullback runs once: the graph is freed as the sweep goes.
        let g = pullback.call_once(&value.ones_like());
        ((value, aux), g)
    }
}

/// `(f(x), df/dx)` for a scalar-valued `f`; the gradient has the structure of `x`.
pub fn value_and_grad<A: Tree>(f: impl Fn(&A) -> Tensor) -> impl Fn(&A) -> (Tensor, A) {
    let vg = value_and_grad_with_aux(move |a: &A| (f(a), ()));
    move |x: &A| {
        let ((v, ()), g) = vg(x);
        (v, g)
    }
}

/// The gradient of a scalar-valued `f`, as a function with the structure of its argument
/// (compose it: `grad(grad(f))`).
pub fn grad<A: Tree>(f: impl Fn(&A) -> Tensor) -> impl Fn(&A) -> A {
    let vg = value_and_grad(f);
    move |x: &A| vg(x).1
}

/// `(gradient, aux)` of a scalar-valued `f` returning `(value, aux)`.
pub fn grad_with_aux<A: Tree, X: Tree>(f: impl Fn(&A) -> (Tensor, X)) -> impl Fn(&A) -> (A, X) {
    let vg = value_and_grad_with_aux(f);
    move |x: &A| {
        let ((_, aux), g) = vg(x);
        (g, aux)
    }
}

/// Maps `f` over axis 0 of every leaf of its argument and stacks every output leaf on axis 0.
pub fn vmap<A: Tree, B: Tree>(f: impl Fn(&A) -> B) -> impl Fn(&A) -> B {
    move |x: &A| vmap_with(&f, vec![Some(0); x.leaves().len()], vec![0])(x)
}

/// [`vmap`] with explicit axes (`None`: shared by every example). `in_axes` has one entry per
/// leaf of the argument, or one per argument (per element of a tuple argument, as JAX's
/// `in_axes=(0, None)`; the entry then applies to every leaf of that element), or a single
/// entry for all. `out_axes[j]` is for leaf `j` of the output (one entry serves all).
pub fn vmap_with<A: Tree, B: Tree>(
    f: impl Fn(&A) -> B,
    in_axes: Vec<Option<isize>>,
    out_axes: Vec<isize>,
) -> impl Fn(&A) -> B {
    move |x: &A| {
        let leaves = x.leaves();
        let per_argument = x.argument_leaf_counts();
        let axes: Vec<Option<isize>> = if in_axes.len() == leaves.len() {
            in_axes.clone()
        } else if in_axes.len() == per_argument.len() {
            per_argument
                .iter()
                .zip(&in_axes)
                .flat_map(|(&n, &a)| std::iter::repeat_n(a, n))
                .collect()
        } else if in_axes.len() == 1 {
            vec![in_axes[0]; leaves.len()]
        } else {
            panic!(
                "vmap_with: {} in_axes given; the argument has {} leaves and {} top-level arguments \
                 (give one entry per leaf, one per argument, or one for all)",
                in_axes.len(),
                leaves.len(),
                per_argument.len()
            )
        };
        let mut captured: Option<(B, ())> = None;
        let outs = vmap_many(
            on_leaves(|a: &A| (f(a), ()), x, &mut captured),
            &leaves,
            &axes,
            &out_axes,
        );
        captured.expect("the function ran").0.rebuild(outs)
    }
}
