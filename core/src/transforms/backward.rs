//! PyTorch-style `backward`: gradients accumulate on leaves created by
//! [`Tensor::requires_grad`], across calls, until cleared with [`Tensor::zero_grad`].

use std::sync::{Arc, OnceLock};

use super::graph::format_graph;
use super::vjp::require_scalar;
use crate::tensor::Tensor;
use crate::trace::{IdSet, Level, sweep};

/// The long-lived level that records ops on `requires_grad` leaves.
pub(crate) fn autograd_level() -> Arc<Level> {
    static LEVEL: OnceLock<Arc<Level>> = OnceLock::new();
    LEVEL.get_or_init(Level::open).clone()
}

/// Listens to `backward` for the leaves it was registered with through
/// [`Tensor::requires_grad_with_hook`]: the place where a data-parallel layer all-reduces
/// gradients across ranks while the rest of the backward sweep still runs.
///
/// A hook belongs to its leaves (a model's parameters), not to the process: two models, or a
/// model and an evaluation graph, each have their own, and a `backward` that reaches none of a
/// hook's leaves does not call it. For a data-parallel hook that means every rank's loss must
/// reach the model (the same program on every rank does); a rank whose graph skips it entirely
/// would leave the others waiting in their all-reduce until the collective timeout.
pub trait GradSyncHook: Send + Sync {
    /// A `backward` call whose graph reaches `reached` (this hook's leaves that the outputs
    /// depend on) is about to sweep. Leaves of the hook not among them get no gradient from
    /// this call, which a hook can act on at once. The default does nothing.
    fn backward_begins(&self, reached: &[Tensor]) {
        let _ = reached;
    }
    /// `leaf`'s gradient is final for this `backward` call: the last rule that feeds it has
    /// run and its `.grad` holds the accumulated value. Called in the same order on every
    /// process that traced the same function.
    fn grad_ready(&self, leaf: &Tensor);
    /// The sweep of a `backward` call that reached some of this hook's leaves is over (called
    /// once per call, after every `grad_ready`): finish the sync and write the results into
    /// `.grad`. Leaves of the hook that got no gradient in this call are the hook's to handle.
    fn backward_done(&self);
}

/// Options of [`backward`].
#[derive(Clone, Copy, Debug, Default)]
pub struct BackwardOptions {
    /// `Some(true)` keeps the graph for another backward; `Some(false)` frees it; `None` (the
    /// default) frees it, since every output here is already materialised.
    pub retain_graph: Option<bool>,
    /// Prints the traced computation (one line per op) before sweeping.
    pub show_graph: bool,
}

/// Accumulates into the `grad` of every `requires_grad` leaf the vector-Jacobian product of
/// `outputs` with `cotangents` (one per output, of its shape and dtype).
pub fn backward(outputs: &[Tensor], cotangents: &[Tensor], options: BackwardOptions) {
    if outputs.len() != cotangents.len() {
        panic!(
            "backward: {} cotangents given for {} outputs",
            cotangents.len(),
            outputs.len()
        );
    }
    for (i, (c, o)) in cotangents.iter().zip(outputs).enumerate() {
        super::check_like("backward", "cotangent", i, c, o);
    }
    crate::jit::note_not_replayable(|| {
        "the function calls backward, which fills .grad slots (a side effect a replay would not \
         repeat); return gradients with grad / value_and_grad instead"
            .to_string()
    });
    let level = autograd_level();
    if options.show_graph {
        println!("{}", format_graph(outputs));
    }
    let seeds: Vec<(Tensor, Tensor)> = outputs.iter().cloned().zip(cotangents.iter().cloned()).collect();
    let all = sweep::collect(outputs, level.id(), &IdSet::default());
    let stops: IdSet = all
        .iter()
        .filter(|t| t.is_grad_leaf())
        .filter_map(|t| t.node_id())
        .collect();
    // Each hook with the leaves of its own that this graph reaches, in order of first sight.
    let mut hooks: Vec<(Arc<dyn GradSyncHook>, Vec<Tensor>)> = Vec::new();
    for t in all.iter().filter(|t| t.is_grad_leaf()) {
        if let Some(h) = t.grad_hook() {
            match hooks.iter_mut().find(|(k, _)| Arc::ptr_eq(k, h)) {
                Some((_, reached)) => reached.push(t.clone()),
                None => hooks.push((h.clone(), vec![t.clone()])),
            }
        }
    }
    let _paused = level.pause();
    for (hook, reached) in &hooks {
        hook.backward_begins(reached);
    }
    // Each leaf's gradient is accumulated into `.grad` the moment it is final, and its hook (if
    // any) hears of it then, so a data-parallel all-reduce overlaps the rest of the sweep.
    let mut on_ready = |leaf: &Tensor, g: &Tensor| {
        let slot = leaf.grad_slot().expect("grad leaf");
        {
            let mut guard = slot.lock();
            let g = g.stop_gradient();
            *guard = Some(match guard.take() {
                Some(prev) => prev + g,
                None => g,
            });
        }
        if let Some(h) = &slot.hook {
            h.grad_ready(leaf);
        }
    };
    // Without retain_graph, each node lets go of its inputs once its rule has run, so the
    // activations are freed during the sweep (and the graph cannot be swept again).
    let release = if options.retain_graph.unwrap_or(false) {
        sweep::Release::Keep
    } else {
        sweep::Release::AllButStops
    };
    sweep::reverse_reporting(&seeds, &level, &stops, Some(&mut on_ready), release);
    drop(seeds);
    for (hook, _) in hooks {
        hook.backward_done();
    }
}

impl Tensor {
    /// `backward` of a scalar loss with cotangent 1, freeing the graph (PyTorch's
    /// `loss.backward()`).
    pub fn backward(&self) {
        require_scalar("backward", self);
        backward(
            std::slice::from_ref(self),
            &[self.ones_like()],
            BackwardOptions::default(),
        );
    }
}
