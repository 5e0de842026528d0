//! Control flow with derivatives, as JAX's `lax.cond` and `lax.scan`.
//!
//! - [`cond`] runs one branch, chosen by a scalar predicate; derivatives flow through the
//!   branch taken. Under `vmap` with a batched predicate both branches run and each example
//!   selects its own (JAX does the same). Reading the predicate is a synchronisation, so a
//!   jitted function with a `cond` on a computed predicate runs eagerly (`jit` says why).
//! - [`scan`] loops `f` over the leading axis of `xs`, threading a carry. The whole loop is one
//!   node of the trace: the forward pass keeps no step's intermediates, and the rules run the
//!   steps again (the VJP backwards through per-step `vjp`s, the JVP forwards through per-step
//!   `jvp`s), so memory during the backward pass holds the carries and one step, never an
//!   unrolled trace of every step. The rules are transforms, so second order, vmap and jit
//!   compose.

use std::sync::Arc;

use super::custom::{as_custom_op, dense_tangents};
use super::jvp::jvp_many;
use super::vjp::vjp_many;
use crate::ops::shape::stack;
use crate::tensor::Tensor;
use crate::trace::Rule;
use crate::tree::Tree;

/// `true_fn(operands)` when `pred` (one element; non-zero is true) holds, else
/// `false_fn(operands)`. Both branches must return the same structure, shapes and dtypes (checked
/// when both run, under `vmap`).
pub fn cond<A: Tree, B: Tree>(
    pred: &Tensor,
    true_fn: impl FnOnce(&A) -> B,
    false_fn: impl FnOnce(&A) -> B,
    operands: &A,
) -> B {
    if pred.numel() != 1 {
        panic!(
            "cond: the predicate must have one element, got shape {:?}; reduce it first (any, all) or use where_ \
             for elementwise choices",
            pred.shape()
        );
    }
    if pred.is_batched() {
        // Every example picks its own branch: compute both and select.
        let (t, f) = (true_fn(operands), false_fn(operands));
        let (tl, fl) = (t.leaves(), f.leaves());
        if tl.len() != fl.len() {
            panic!(
                "cond: the branches return {} and {} leaves; they must return the same structure",
                tl.len(),
                fl.len()
            );
        }
        let p = pred.reshape(Vec::<usize>::new()).cast(crate::DType::Bool);
        let chosen = tl
            .iter()
            .zip(&fl)
            .enumerate()
            .map(|(i, (a, b))| {
                if a.shape() != b.shape() || a.dtype() != b.dtype() {
                    panic!(
                        "cond: leaf {i} of the branches' results differs: {:?} {} vs {:?} {}",
                        a.shape(),
                        a.dtype(),
                        b.shape(),
                        b.dtype()
                    );
                }
                p.where_(a, b)
            })
            .collect();
        return t.rebuild(chosen);
    }
    let take_true = pred
        .cast(crate::DType::Bool)
        .reshape(Vec::<usize>::new())
        .item::<bool>();
    if take_true {
        true_fn(operands)
    } else {
        false_fn(operands)
    }
}

/// Why a scan or checkpoint refuses a function that captures traced values.
pub(crate) const CAPTURED: &str = "the function uses a traced value it captures (a parameter being differentiated, \
     taken from the enclosing scope): its derivative would be lost. Pass it through the argument instead (for \
     scan: scan_with's params, or the carry)";

type StepFn<C, X, Y> = Arc<dyn Fn(&C, &X) -> (C, Y) + Send + Sync>;

/// How the scan's outputs are packed into the one tensor its node records: the final carry's
/// leaves then the stacked outputs' leaves, each flattened, in order.
#[derive(Clone)]
struct Packing {
    shapes: Vec<Vec<usize>>,
}

impl Packing {
    fn pack(&self, leaves: &[Tensor]) -> Tensor {
        let flat: Vec<Tensor> = leaves.iter().map(|t| t.reshape([t.numel()])).collect();
        crate::ops::shape::concatenate(&flat, 0)
    }

    fn unpack(&self, packed: &Tensor) -> Vec<Tensor> {
        let mut at = 0usize;
        self.shapes
            .iter()
            .map(|s| {
                let n: usize = s.iter().product();
                let part = packed
                    .slice_axis(0, Some(at as isize), Some((at + n) as isize), 1)
                    .reshape(s.clone());
                at += n;
                part
            })
            .collect()
    }
}

struct ScanRule<C, X, Y> {
    step: StepFn<C, X, Y>,
    /// The carry's structure.
    carry: C,
    /// The structure of one step's `x` (the xs leaves without their leading axis).
    x_step: X,
    /// The number of `y` leaves.
    ny: usize,
    /// Steps (at least 1).
    length: usize,
    packing: Packing,
    _y: std::marker::PhantomData<fn() -> Y>,
}

impl<C: Tree, X: Tree, Y: Tree> ScanRule<C, X, Y> {
    fn split_inputs(&self, inputs: &[Tensor]) -> (Vec<Tensor>, Vec<Tensor>) {
        let nc = self.carry.leaves().len();
        (inputs[..nc].to_vec(), inputs[nc..].to_vec())
    }

    /// One step as a function of flat leaves: `[carry.., x..] -> [carry'.., y..]`.
    fn flat_step(&self, leaves: &[Tensor]) -> Vec<Tensor> {
        let nc = self.carry.leaves().len();
        let c = self.carry.rebuild(leaves[..nc].to_vec());
        let x = self.x_step.rebuild(leaves[nc..].to_vec());
        let (c2, y) = (self.step)(&c, &x);
        let mut out = c2.leaves();
        out.extend(y.leaves());
        out
    }

    fn x_at(xs: &[Tensor], t: usize) -> Vec<Tensor> {
        xs.iter().map(|l| l.index_axis(0, t as isize)).collect()
    }
}

impl<C, X, Y> Rule for ScanRule<C, X, Y>
where
    C: Tree + Send + Sync + 'static,
    X: Tree + Send + Sync + 'static,
    Y: Tree + Send + Sync + 'static,
{
    fn name(&self) -> String {
        format!("scan({} steps)", self.length)
    }

    fn vjp(&self, inputs: &[Tensor], _out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        let (c0, xs) = self.split_inputs(inputs);
        let nc = c0.len();
        let cts = self.packing.unpack(ct);
        let (mut ct_c, ct_ys) = (cts[..nc].to_vec(), cts[nc..].to_vec());
        // The carries entering each step, recomputed from the inputs (so that they carry the
        // inputs' own derivatives for higher orders).
        let mut carries = vec![c0.clone()];
        for t in 0..self.length.saturating_sub(1) {
            let mut leaves = carries[t].clone();
            leaves.extend(Self::x_at(&xs, t));
            carries.push(self.flat_step(&leaves)[..nc].to_vec());
        }
        let mut ct_xs: Vec<Vec<Tensor>> = vec![Vec::new(); self.length];
        for t in (0..self.length).rev() {
            let mut primals = carries[t].clone();
            primals.extend(Self::x_at(&xs, t));
            let (_, pullback) = vjp_many(|l| self.flat_step(l), &primals);
            let mut step_ct = ct_c.clone();
            step_ct.extend(ct_ys.iter().map(|y| y.index_axis(0, t as isize)));
            let back = pullback.call(&step_ct);
            ct_c = back[..nc].to_vec();
            ct_xs[t] = back[nc..].to_vec();
        }
        let mut grads: Vec<Option<Tensor>> = ct_c.into_iter().map(Some).collect();
        for k in 0..xs.len() {
            let per_step: Vec<Tensor> = ct_xs.iter().map(|g| g[k].clone()).collect();
            grads.push(Some(stack(&per_step, 0)));
        }
        grads
    }

    fn jvp(&self, inputs: &[Tensor], _out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor> {
        let (mut c, xs) = self.split_inputs(inputs);
        let nc = c.len();
        let ts = dense_tangents(inputs, tangents);
        let (mut tc, txs) = (ts[..nc].to_vec(), ts[nc..].to_vec());
        let mut ty_steps: Vec<Vec<Tensor>> = vec![Vec::new(); self.ny];
        for t in 0..self.length {
            let mut primals = c.clone();
            primals.extend(Self::x_at(&xs, t));
            let mut tans = tc.clone();
            tans.extend(Self::x_at(&txs, t));
            let (out, tout) = jvp_many(|l| self.flat_step(l), &primals, &tans);
            c = out[..nc].to_vec();
            tc = tout[..nc].to_vec();
            for (k, ty) in tout[nc..].iter().enumerate() {
                ty_steps[k].push(ty.clone());
            }
        }
        let mut leaves = tc;
        leaves.extend(ty_steps.iter().map(|steps| stack(steps, 0)));
        Some(self.packing.pack(&leaves))
    }
}

/// [`scan`] with parameters: `f(params, carry, x) -> (carry, y)`, differentiated in `params` as
/// well (their gradient is the sum over the steps), as a JAX scan closing over them.
pub fn scan_with<P, C, X, Y>(
    f: impl Fn(&P, &C, &X) -> (C, Y) + Send + Sync + 'static,
    params: &P,
    init: &C,
    xs: &X,
) -> (C, Y)
where
    P: Tree + Send + Sync + 'static,
    C: Tree + Send + Sync + 'static,
    X: Tree + Send + Sync + 'static,
    Y: Tree + Send + Sync + 'static,
{
    let carry = (params.map_leaves(Tensor::clone), init.map_leaves(Tensor::clone));
    let ((_, last), ys) = scan(
        move |(p, c): &(P, C), x: &X| {
            let (c2, y) = f(p, c, x);
            ((p.map_leaves(Tensor::clone), c2), y)
        },
        &carry,
        xs,
    );
    (last, ys)
}

/// `lax.scan`: with `f(carry, x) -> (carry, y)`, runs over the leading axis of every leaf of
/// `xs` and returns the last carry and the `y`s stacked along a new leading axis. `f` must
/// keep the carry's structure, shapes and dtypes. The carry and `y` leaves must be floats of
/// one dtype (they travel packed in one node); `xs` needs at least one leaf, all of one
/// length. See the module documentation for how derivatives are computed. `f` must take what
/// it differentiates through its arguments: a traced value it captures is refused with a
/// message (use [`scan_with`] for parameters).
pub fn scan<C, X, Y>(f: impl Fn(&C, &X) -> (C, Y) + Send + Sync + 'static, init: &C, xs: &X) -> (C, Y)
where
    C: Tree + Send + Sync + 'static,
    X: Tree + Send + Sync + 'static,
    Y: Tree + Send + Sync + 'static,
{
    let step: StepFn<C, X, Y> = Arc::new(f);
    let x_leaves = xs.leaves();
    let Some(first) = x_leaves.first() else {
        panic!("scan: xs has no leaves; its leading axis gives the number of steps")
    };
    if first.rank() == 0 {
        panic!("scan: the xs leaves need a leading (step) axis; leaf 0 is a scalar");
    }
    let length = first.shape()[0];
    if let Some((i, l)) = x_leaves
        .iter()
        .enumerate()
        .find(|(_, l)| l.rank() == 0 || l.shape()[0] != length)
    {
        panic!(
            "scan: every xs leaf needs the same leading extent ({length}, from leaf 0); leaf {i} has shape {:?}",
            l.shape()
        );
    }
    if length == 0 {
        panic!("scan: xs has 0 steps; the outputs' shapes would be unknown");
    }
    // The forward pass on stop-gradient values: nothing inside is recorded.
    let c0 = init.map_leaves(Tensor::stop_gradient);
    let xs_values: Vec<Tensor> = x_leaves.iter().map(Tensor::stop_gradient).collect();
    let x_template = xs.map_leaves(|l| l.index_axis(0, 0));
    let mut carry = c0;
    let mut ys_steps: Vec<Y> = Vec::with_capacity(length);
    for t in 0..length {
        let x = x_template.rebuild(xs_values.iter().map(|l| l.index_axis(0, t as isize)).collect());
        let (c2, y) = step(&carry, &x);
        let (before, after) = (carry.leaves(), c2.leaves());
        let same = before.len() == after.len()
            && before
                .iter()
                .zip(&after)
                .all(|(a, b)| a.shape() == b.shape() && a.dtype() == b.dtype());
        if !same {
            panic!(
                "scan: step {t} changed the carry from {:?} to {:?} (shapes and dtypes must stay)",
                before
                    .iter()
                    .map(|l| (l.shape().to_vec(), l.dtype()))
                    .collect::<Vec<_>>(),
                after
                    .iter()
                    .map(|l| (l.shape().to_vec(), l.dtype()))
                    .collect::<Vec<_>>()
            );
        }
        carry = c2;
        ys_steps.push(y);
    }
    let y_template = ys_steps[0].map_leaves(Tensor::stop_gradient);
    let ny = y_template.leaves().len();
    let stacked: Vec<Tensor> = (0..ny)
        .map(|k| stack(&ys_steps.iter().map(|y| y.leaves()[k].clone()).collect::<Vec<_>>(), 0))
        .collect();
    let mut out_leaves = carry.leaves();
    out_leaves.extend(stacked.iter().cloned());
    let Some(dtype) = out_leaves.first().map(Tensor::dtype) else {
        panic!("scan: the step returns no carry and no y leaf; there is nothing to compute")
    };
    if let Some((i, l)) = out_leaves
        .iter()
        .enumerate()
        .find(|(_, l)| !l.dtype().is_float() || l.dtype() != dtype)
    {
        panic!(
            "scan: the carry and y leaves must be floats of one dtype (leaf {i} is {}, leaf 0 is {dtype}); cast them \
             or return integers outside the scan",
            l.dtype()
        );
    }
    if out_leaves.iter().any(Tensor::is_traced) {
        panic!("scan: {CAPTURED}");
    }
    let packing = Packing {
        shapes: out_leaves.iter().map(|l| l.shape().to_vec()).collect(),
    };
    let packed = packing.pack(&out_leaves);
    let mut inputs = init.leaves();
    inputs.extend(x_leaves.iter().cloned());
    let rule_packing = packing.clone();
    let recorded = as_custom_op(&packed, &inputs, move || ScanRule {
        step,
        carry: init.map_leaves(Tensor::stop_gradient),
        x_step: x_template,
        ny,
        length,
        packing: rule_packing,
        _y: std::marker::PhantomData,
    });
    let parts = packing.unpack(&recorded);
    let nc = carry.leaves().len();
    (
        carry.rebuild(parts[..nc].to_vec()),
        y_template.rebuild(parts[nc..].to_vec()),
    )
}
