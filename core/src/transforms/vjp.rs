//! Reverse mode: `vjp` traces the function on fresh leaves, and the returned [`VjpFn`] sweeps
//! the recorded graph backwards for any cotangent.

use std::sync::Arc;

use super::{check_like, release_finished};
use crate::tensor::Tensor;
use crate::trace::sweep::{self, Release};
use crate::trace::{IdSet, Level};

/// Told the index of a primal and its final cotangent during a reporting sweep.
type OnPrimalReady<'a> = &'a mut dyn FnMut(usize, &Tensor);

/// The pullback returned by [`vjp_many`]: maps output cotangents to primal cotangents. It can
/// be called any number of times (and from any thread).
pub struct VjpFn {
    level: Arc<Level>,
    leaves: Vec<Tensor>,
    outputs: Vec<Tensor>,
}

impl VjpFn {
    /// Cotangents of the primals (one per primal, zeros where an output does not depend on it)
    /// for `cotangents` of the outputs (one per output, each of its output's shape and dtype).
    pub fn call(&self, cotangents: &[Tensor]) -> Vec<Tensor> {
        self.sweep(cotangents, None, Release::Keep)
    }

    /// [`VjpFn::call`] for the last time: each node traced by this `vjp` alone lets go of its
    /// inputs once its rule has run, so activations are freed during the sweep rather than
    /// after it (what `grad` and `value_and_grad` do: their pullback runs once).
    pub fn call_once(self, cotangents: &[Tensor]) -> Vec<Tensor> {
        self.sweep(cotangents, None, Release::OwnLevel)
    }

    /// [`VjpFn::call`], telling `on_ready(i, cotangent)` about primal `i` as soon as its
    /// cotangent is final during the sweep (the last rule feeding it has run), before the sweep
    /// ends; primals the outputs do not depend on are not reported. This is what lets a
    /// data-parallel caller start all-reducing early gradients while later ones are computed.
    pub fn call_reporting(&self, cotangents: &[Tensor], on_ready: &mut dyn FnMut(usize, &Tensor)) -> Vec<Tensor> {
        self.sweep(cotangents, Some(on_ready), Release::Keep)
    }

    /// [`VjpFn::call_reporting`] for the last time, freeing the graph as the sweep goes (as
    /// [`VjpFn::call_once`] does).
    pub fn call_reporting_once(self, cotangents: &[Tensor], on_ready: &mut dyn FnMut(usize, &Tensor)) -> Vec<Tensor> {
        self.sweep(cotangents, Some(on_ready), Release::OwnLevel)
    }

    fn sweep(&self, cotangents: &[Tensor], on_ready: Option<OnPrimalReady>, release: Release) -> Vec<Tensor> {
        if cotangents.len() != self.outputs.len() {
            panic!(
                "vjp: {} cotangents given for {} outputs; pass one per output",
                cotangents.len(),
                self.outputs.len()
            );
        }
        for (i, (c, o)) in cotangents.iter().zip(&self.outputs).enumerate() {
            check_like("vjp", "cotangent", i, c, o);
        }
        let stops: IdSet = self.leaves.iter().filter_map(|l| l.node_id()).collect();
        let seeds: Vec<(Tensor, Tensor)> = self.outputs.iter().cloned().zip(cotangents.iter().cloned()).collect();
        let leaf_cts = match on_ready {
            None => sweep::reverse(&seeds, &self.level, &stops, release),
            Some(report) => {
                let index: crate::trace::IdMap<usize> = self
                    .leaves
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.node_id().expect("leaves are traced"), i))
                    .collect();
                let mut tell = |leaf: &Tensor, g: &Tensor| {
                    if let Some(&i) = leaf.node_id().and_then(|id| index.get(&id)) {
                        report(i, &release_finished(g));
                    }
                };
                sweep::reverse_reporting(&seeds, &self.level, &stops, Some(&mut tell), release)
            }
        };
        self.leaves
            .iter()
            .map(|l| {
                let g = leaf_cts
                    .get(&l.node_id().expect("leaves are traced"))
                    .cloned()
                    .unwrap_or_else(|| l.zeros_like());
                release_finished(&g)
            })
            .collect()
    }

    /// The outputs' shapes, in order.
    pub fn output_shapes(&self) -> Vec<Vec<usize>> {
        self.outputs.iter().map(|o| o.shape().to_vec()).collect()
    }
}

/// Traces `f` on fresh leaves made from `primals` and returns its outputs and the pullback.
/// Leaves are fresh per call, so nested calls never mix up their perturbations; primals that
/// an enclosing transform traces stay connected to it.
pub fn vjp_many(f: impl FnOnce(&[Tensor]) -> Vec<Tensor>, primals: &[Tensor]) -> (Vec<Tensor>, VjpFn) {
    let level = Level::open();
    let leaves: Vec<Tensor> = primals.iter().map(|p| p.leaf_of(&level, None)).collect();
    let outputs = f(&leaves);
    level.close();
    let released = outputs.iter().map(release_finished).collect();
    (released, VjpFn { level, leaves, outputs })
}

/// Checks that `out` is a scalar, naming the transform.
pub(crate) fn require_scalar(op: &str, out: &Tensor) {
    if out.rank() != 0 {
        panic!(
            "{op}: the function must return a scalar (shape []), got shape {:?} ({}); reduce it \
             (e.g. .sum_all()) or use vjp / jacrev for non-scalar outputs",
            out.shape(),
            out.dtype()
        );
    }
    if !out.dtype().is_float() {
        panic!("{op}: the function must return a float scalar, got {}", out.dtype());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a traced tensor's node still holds its inputs.
    fn holds_inputs(t: &Tensor) -> bool {
        t.node().expect("traced").inputs.lock().unwrap().is_some()
    }

    /// `sum(sin(exp(x)))` traced by `vjp_many`, with the intermediates kept aside.
    fn traced(x: &Tensor) -> (VjpFn, Vec<Tensor>) {
        let mut kept = Vec::new();
        let (_, pullback) = vjp_many(
            |t| {
                let a = t[0].exp();
                let b = a.sin();
                kept.extend([a, b.clone()]);
                vec![b.sum(crate::ops::Axes::All, false)]
            },
            std::slice::from_ref(x),
        );
        (pullback, kept)
    }

    #[test]
    fn a_last_call_frees_the_graph_and_other_calls_keep_it() {
        let x = Tensor::from_vec(vec![0.1f64, 0.2, 0.3], &[3]);
        let one = Tensor::from_vec(vec![1.0f64], &[]);
        let (pullback, kept) = traced(&x);
        let first = pullback.call(std::slice::from_ref(&one));
        assert!(kept.iter().all(holds_inputs), "call keeps the graph for another call");
        let last = pullback.call_once(std::slice::from_ref(&one));
        assert_eq!(first[0].to_vec::<f64>(), last[0].to_vec::<f64>());
        assert!(
            !kept.iter().any(holds_inputs),
            "call_once lets go of every node's inputs"
        );
    }

    #[test]
    fn nodes_an_enclosing_transform_traced_too_are_kept_for_its_sweep() {
        let x = Tensor::from_vec(vec![0.1f64, 0.2, 0.3], &[3]);
        let mut kept = Vec::new();
        // grad of grad: the inner nodes belong to both levels, and the outer sweep needs them.
        let (_, outer) = vjp_many(
            |t| {
                let (pullback, inner_kept) = traced(&t[0]);
                let one = Tensor::from_vec(vec![1.0f64], &[]);
                let g = pullback.call_once(std::slice::from_ref(&one));
                assert!(inner_kept.iter().all(holds_inputs), "shared nodes stay");
                kept = inner_kept;
                vec![g[0].sum(crate::ops::Axes::All, false)]
            },
            std::slice::from_ref(&x),
        );
        let one = Tensor::from_vec(vec![1.0f64], &[]);
        let h = outer.call_once(std::slice::from_ref(&one))[0].to_vec::<f64>();
        // d/dx sum(cos(e^x) e^x) = e^x (cos(e^x) - e^x sin(e^x)).
        for (xi, hi) in [0.1f64, 0.2, 0.3].iter().zip(h) {
            let e = xi.exp();
            assert!((hi - e * (e.cos() - e * e.sin())).abs() < 1e-12);
        }
    }
}
