//! Rematerialisation (JAX's `jax.checkpoint`, PyTorch's activation checkpointing): `f`'s
//! forward pass keeps none of its intermediates; the backward pass (and forward mode) runs `f`
//! again from its inputs when it needs them. The node recorded for the call holds only the
//! inputs, so a deep network whose blocks are checkpointed keeps one block's activations at a
//! time during the backward sweep instead of all of them.

use std::sync::Arc;

use super::custom::{as_custom_op, composition_jvp, composition_vjp};
use crate::tensor::Tensor;
use crate::trace::Rule;
use crate::tree::Tree;

type Body<A> = Arc<dyn Fn(&A) -> Tensor + Send + Sync>;

struct RematRule<A> {
    /// The argument's structure (its leaves are replaced by the node's inputs).
    template: A,
    body: Body<A>,
}

impl<A: Tree + Send + Sync + 'static> Rule for RematRule<A> {
    fn name(&self) -> String {
        "checkpoint".into()
    }
    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        // Runs the body again, traced this time, and pulls the cotangent back through it.
        composition_vjp(
            |leaves| (self.body)(&self.template.rebuild(leaves.to_vec())),
            inputs,
            ct,
        )
    }
    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        composition_jvp(
            |leaves| (self.body)(&self.template.rebuild(leaves.to_vec())),
            inputs,
            tangents,
        )
    }
}

/// `f`, rematerialised: the same values and derivatives (of every order, forward and reverse),
/// but the forward pass keeps none of `f`'s intermediates and the derivatives recompute them.
/// Trades compute (one more forward of `f` per backward) for memory. `f` must take what it
/// differentiates through its argument: a traced value it captures is refused with a message
/// (its derivative would otherwise be lost).
pub fn checkpoint<A>(f: impl Fn(&A) -> Tensor + Send + Sync + 'static) -> impl Fn(&A) -> Tensor
where
    A: Tree + Send + Sync + 'static,
{
    let body: Body<A> = Arc::new(f);
    move |x: &A| {
        // The value only: nothing inside is recorded, so the intermediates are freed now.
        let template = x.map_leaves(Tensor::stop_gradient);
        let out = body(&template);
        if out.is_traced() {
            panic!("checkpoint: {}", super::control::CAPTURED);
        }
        let body = body.clone();
        as_custom_op(&out, &x.leaves(), move || RematRule { template, body })
    }
}
