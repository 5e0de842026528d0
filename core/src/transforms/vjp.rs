//! Reverse mode: `vjp` traces the function on fresh leaves, and the returned [`VjpFn`] sweeps
//! the recorded graph backwards for any cotangent.

use std::sync::Arc;

use super::{check_like, release_finished};
use crate::tensor::Tensor;
use crate::trace::{IdSet, Level, sweep};

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
        self.sweep(cotangents, None)
    }

    /// [`VjpFn::call`], telling `on_ready(i, cotangent)` about primal `i` as soon as its
    /// cotangent is final during the sweep (the last rule feeding it has run), before the sweep
    /// ends; primals the outputs do not depend on are not reported. This is what lets a
    /// data-parallel caller start all-reducing early gradients while later ones are computed.
    pub fn call_reporting(&self, cotangents: &[Tensor], on_ready: &mut dyn FnMut(usize, &Tensor)) -> Vec<Tensor> {
        self.sweep(cotangents, Some(on_ready))
    }

    fn sweep(&self, cotangents: &[Tensor], on_ready: Option<OnPrimalReady>) -> Vec<Tensor> {
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
        let (leaf_cts, _) = match on_ready {
            None => sweep::reverse(&seeds, &self.level, &stops),
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
                sweep::reverse_reporting(&seeds, &self.level, &stops, Some(&mut tell))
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
