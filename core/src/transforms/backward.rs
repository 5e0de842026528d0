//! PyTorch-style `backward`: gradients accumulate on leaves created by
//! [`Tensor::requires_grad`], across calls, until cleared with [`Tensor::zero_grad`].

use std::sync::{Arc, OnceLock, RwLock};

use super::graph::format_graph;
use super::vjp::require_scalar;
use crate::tensor::Tensor;
use crate::trace::{sweep, IdSet, Level};

/// The long-lived level that records ops on `requires_grad` leaves.
pub(crate) fn autograd_level() -> Arc<Level> {
    static LEVEL: OnceLock<Arc<Level>> = OnceLock::new();
    LEVEL.get_or_init(Level::open).clone()
}

/// Called by `backward` with every leaf that received a gradient, after accumulation (the
/// place where a data-parallel layer all-reduces the gradients across ranks).
pub trait GradSyncHook: Send + Sync {
    /// Synchronises the gradients of `leaves` (each has `grad()` set).
    fn after_backward(&self, leaves: &[Tensor]);
}

fn hook_slot() -> &'static RwLock<Option<Arc<dyn GradSyncHook>>> {
    static HOOK: OnceLock<RwLock<Option<Arc<dyn GradSyncHook>>>> = OnceLock::new();
    HOOK.get_or_init(|| RwLock::new(None))
}

/// Installs (or with `None` removes) the gradient-sync hook that `backward` calls.
pub fn set_grad_sync_hook(hook: Option<Arc<dyn GradSyncHook>>) {
    *hook_slot().write().unwrap_or_else(|e| e.into_inner()) = hook;
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
    let (leaf_cts, visited) = {
        let _paused = level.pause();
        sweep::reverse(&seeds, &level, &stops)
    };
    let mut touched = Vec::new();
    for t in all.iter().filter(|t| t.is_grad_leaf()) {
        let node = t.node().expect("leaf");
        if let Some(g) = leaf_cts.get(&node.id) {
            let slot = node.grad.as_ref().expect("grad leaf");
            let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
            let g = g.stop_gradient();
            *guard = Some(match guard.take() {
                Some(prev) => prev + g,
                None => g,
            });
            touched.push(t.clone());
        }
    }
    if !options.retain_graph.unwrap_or(false) {
        for t in visited.iter().filter(|t| !t.is_grad_leaf()) {
            *t.node()
                .expect("traced")
                .inputs
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
    if let Some(hook) = hook_slot().read().unwrap_or_else(|e| e.into_inner()).clone() {
        hook.after_backward(&touched);
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
