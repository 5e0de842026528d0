//! User-defined derivative rules, as JAX's `custom_vjp` and `custom_jvp`: a function whose
//! output is recorded as one op over the argument's leaves, with the user's rule. The rules are
//! written in public tensor ops, so they compose with every transform like built-in ones
//! (grad of grad, vmap, jit); what JAX refuses, we refuse too (forward mode through a
//! `custom_vjp`).

use std::sync::Arc;

use super::jvp::jvp_many;
use super::vjp::vjp_many;
use crate::tensor::Tensor;
use crate::trace::Rule;
use crate::tree::Tree;

type BwdFn<A, R> = Arc<dyn Fn(&R, &Tensor) -> A + Send + Sync>;
type JvpFn<A> = Arc<dyn Fn(&A, &A) -> Tensor + Send + Sync>;

/// Records `out`'s value as the result of `rule` applied to `leaves` (the output's graph inside
/// the user's function is dropped: its derivative is the rule's). Shared by the transforms
/// whose ops are functions (custom rules, `checkpoint`, `scan`).
pub(crate) fn as_custom_op<R: Rule + 'static>(out: &Tensor, leaves: &[Tensor], rule: impl FnOnce() -> R) -> Tensor {
    let inputs: Vec<&Tensor> = leaves.iter().collect();
    Tensor::record_batched(out.raw().clone(), out.batch().to_vec(), &inputs, rule)
}

/// The tangents of a rule's inputs with the absent ones (`None`: not differentiated) as zeros.
pub(crate) fn dense_tangents(inputs: &[Tensor], tangents: &[Option<Tensor>]) -> Vec<Tensor> {
    tangents
        .iter()
        .zip(inputs)
        .map(|(t, x)| t.clone().unwrap_or_else(|| x.zeros_like()))
        .collect()
}

/// The VJP at `inputs` of a node whose derivatives are those of the composition `f` (a fused
/// kernel's, a rematerialised body's): `f` is traced again from the node's inputs and the
/// cotangent pulled back through it, once, freeing the trace as it goes.
pub(crate) fn composition_vjp(
    f: impl FnOnce(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    ct: &Tensor,
) -> Vec<Option<Tensor>> {
    let (_, pullback) = vjp_many(|t| vec![f(t)], inputs);
    pullback
        .call_once(std::slice::from_ref(ct))
        .into_iter()
        .map(Some)
        .collect()
}

/// The JVP at `inputs` of a node whose derivatives are those of the composition `f`, with the
/// absent tangents as zeros ([`composition_vjp`]'s forward-mode twin).
pub(crate) fn composition_jvp(
    f: impl FnOnce(&[Tensor]) -> Tensor,
    inputs: &[Tensor],
    tangents: &[Option<Tensor>],
) -> Option<Tensor> {
    let (_, out) = jvp_many(|t| vec![f(t)], inputs, &dense_tangents(inputs, tangents));
    out.into_iter().next()
}

fn check_cotangents(name: &str, got: &[Tensor], inputs: &[Tensor]) {
    if got.len() != inputs.len() {
        panic!(
            "{name}: the backward rule returned {} cotangents for an argument of {} leaves",
            got.len(),
            inputs.len()
        );
    }
    for (i, (g, x)) in got.iter().zip(inputs).enumerate() {
        if g.shape() != x.shape() {
            panic!(
                "{name}: the backward rule's cotangent {i} has shape {:?}, the argument's leaf has {:?}",
                g.shape(),
                x.shape()
            );
        }
    }
}

struct CustomVjpRule<A, R> {
    residuals: R,
    bwd: BwdFn<A, R>,
}

impl<A: Tree + Send + Sync + 'static, R: Tree + Send + Sync + 'static> Rule for CustomVjpRule<A, R> {
    fn name(&self) -> String {
        "custom_vjp".into()
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let cts = (self.bwd)(&self.residuals, ct).leaves();
        check_cotangents("custom_vjp", &cts, inputs);
        cts.into_iter().map(Some).collect()
    }
    fn jvp(&self, _inputs: &[Tensor], _out: &Tensor, _tangents: &[Option<Tensor>]) -> Option<Tensor> {
        panic!(
            "custom_vjp: forward-mode differentiation (jvp, jacfwd, or hessian's outer jacfwd through this \
             function's output) is not defined for a function with a custom VJP, as in JAX; use jacrev, or \
             define the function with custom_jvp"
        )
    }
}

/// JAX's `custom_vjp`: a scalar- or tensor-valued function of a pytree whose reverse-mode
/// derivative is `bwd` instead of the derivative of its ops.
///
/// `fwd(x)` returns the output and residuals (any pytree of values that `bwd` needs);
/// `bwd(residuals, cotangent)` returns the cotangent of `x`, shaped like `x`. Residuals
/// computed from `x` keep their own derivatives, so second-order reverse mode works when `bwd`
/// is written in tensor ops. Forward mode through the output panics, as in JAX. Traced values
/// that `fwd` captures instead of taking through `x` are constants of the rule (their
/// derivative is zero): pass everything that is differentiated through the argument.
pub fn custom_vjp<A, R>(
    fwd: impl Fn(&A) -> (Tensor, R),
    bwd: impl Fn(&R, &Tensor) -> A + Send + Sync + 'static,
) -> impl Fn(&A) -> Tensor
where
    A: Tree + Send + Sync + 'static,
    R: Tree + Send + Sync + 'static,
{
    let bwd: BwdFn<A, R> = Arc::new(bwd);
    move |x: &A| {
        let (out, residuals) = fwd(x);
        let bwd = bwd.clone();
        as_custom_op(&out, &x.leaves(), move || CustomVjpRule { residuals, bwd })
    }
}

struct CustomJvpRule<A> {
    template: A,
    jvp: JvpFn<A>,
}

impl<A: Tree + Send + Sync + 'static> Rule for CustomJvpRule<A> {
    fn name(&self) -> String {
        "custom_jvp".into()
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let ts = dense_tangents(inputs, tangents);
        Some((self.jvp)(
            &self.template.rebuild(inputs.to_vec()),
            &self.template.rebuild(ts),
        ))
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        // The JVP is linear in the tangents; its transpose at the cotangent is the reverse-mode
        // derivative (what JAX derives from a custom JVP).
        let primals = self.template.rebuild(inputs.to_vec());
        let zeros: Vec<Tensor> = inputs.iter().map(Tensor::zeros_like).collect();
        let (_, pullback) = vjp_many(
            |ts| vec![(self.jvp)(&primals, &self.template.rebuild(ts.to_vec()))],
            &zeros,
        );
        let cts = pullback.call(std::slice::from_ref(ct));
        check_cotangents("custom_jvp", &cts, inputs);
        cts.into_iter().map(Some).collect()
    }
}

/// JAX's `custom_jvp`: `f` with the forward-mode derivative `jvp(primals, tangents)` (linear in
/// the tangents) instead of the derivative of its ops. Reverse mode transposes that rule, so
/// `grad`, `jacrev` and higher orders all use it, as in JAX. As for [`custom_vjp`], traced values
/// that `f` captures are constants of the rule: pass them through the argument.
pub fn custom_jvp<A>(
    f: impl Fn(&A) -> Tensor,
    jvp: impl Fn(&A, &A) -> Tensor + Send + Sync + 'static,
) -> impl Fn(&A) -> Tensor
where
    A: Tree + Send + Sync + 'static,
{
    let jvp: JvpFn<A> = Arc::new(jvp);
    move |x: &A| {
        // The value only: its derivative is the rule's, so f's own ops need no graph.
        let template = x.map_leaves(Tensor::stop_gradient);
        let out = f(&template);
        let jvp = jvp.clone();
        as_custom_op(&out, &x.leaves(), move || CustomJvpRule { template, jvp })
    }
}
