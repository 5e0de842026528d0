//! Graph nodes and the derivative-rule trait every differentiable op implements.

use std::sync::{Arc, Mutex};

use smallvec::SmallVec;

use super::level::Level;
use crate::tensor::Tensor;

/// The derivative rules of one op application. Rules are written in public tensor ops, so the
/// derivative of a rule is again a trace and higher-order derivatives come from composition.
pub trait Rule: Send + Sync {
    /// One-line description for graph printouts (`sum(axes=[0], keepdims=false)`).
    fn name(&self) -> String;
    /// Cotangents of the inputs given the cotangent `ct` of the output (`None`: zero or not
    /// differentiable).
    fn vjp(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>>;
    /// Like [`Rule::vjp`], computing only the cotangents of inputs with `wanted[i]` (the sweep
    /// passes false for inputs that are constants of the trace). Rules whose unwanted
    /// cotangents are expensive (matmul, binary ops, where, the tap products) override this.
    fn vjp_wanted(&self, inputs: &[Tensor], out: &Tensor, ct: &Tensor, wanted: &[bool]) -> Vec<Option<Tensor>> {
        let _ = wanted;
        self.vjp(inputs, out, ct)
    }
    /// Tangent of the output given tangents of the inputs (`None`: zero). At least one
    /// tangent is present.
    fn jvp(&self, inputs: &[Tensor], out: &Tensor, tangents: &[Option<Tensor>]) -> Option<Tensor>;
}

/// The `.grad` of a `requires_grad` leaf and the hook (if any) that `backward` tells when the
/// gradient of this leaf is final.
pub(crate) struct GradSlot {
    /// The accumulated gradient.
    pub value: Mutex<Option<Tensor>>,
    /// The data-parallel hook the leaf was registered with.
    pub hook: Option<Arc<dyn crate::transforms::backward::GradSyncHook>>,
}

impl GradSlot {
    /// Locks the gradient (a poisoned lock is taken over: the value is a plain handle).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, Option<Tensor>> {
        self.value.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The inputs of a node (inline for up to three, the common case).
pub(crate) type Inputs = SmallVec<[Tensor; 3]>;
/// The levels of a node (inline for up to two nested transforms).
pub(crate) type Levels = SmallVec<[Arc<Level>; 2]>;

/// A recorded op application. The rule is stored inline (the last field, unsized in
/// `Node<dyn Rule>`), so recording a node is one allocation.
pub(crate) struct Node<R: ?Sized + Rule = dyn Rule> {
    /// Unique, increasing id (topological order).
    pub id: u64,
    /// The inputs; `None` once `backward` freed the graph.
    pub inputs: Mutex<Option<Inputs>>,
    /// The levels this node belongs to, sorted by id.
    pub levels: Levels,
    /// Accumulated gradient (and its sync hook), for leaves created by `requires_grad`.
    pub grad: Option<GradSlot>,
    /// The derivative rules.
    pub rule: R,
}

impl<R: ?Sized + Rule> Node<R> {
    /// True when the node belongs to level `id`.
    pub fn in_level(&self, id: u64) -> bool {
        self.levels.iter().any(|l| l.id() == id)
    }

    /// A copy of the inputs; panics with a hint when the graph was freed.
    pub fn inputs(&self) -> Inputs {
        let mut copy = Inputs::new();
        self.for_each_input(|t| copy.push(t.clone()));
        copy
    }

    /// Calls `f` on every input without copying them (the walk that collects a graph); panics
    /// with a hint when the graph was freed.
    pub fn for_each_input(&self, mut f: impl FnMut(&Tensor)) {
        let inputs = self.inputs.lock().unwrap_or_else(|e| e.into_inner());
        let Some(inputs) = inputs.as_ref() else {
            panic!(
                "backward: the graph through `{}` was already freed by an earlier backward; \
                 pass retain_graph = Some(true) to the first call to keep it",
                self.rule.name()
            )
        };
        for t in inputs {
            f(t);
        }
    }
}

impl<R: ?Sized + Rule> Drop for Node<R> {
    /// Frees long chains of nodes iteratively: a recursive drop of a graph with many thousands
    /// of ops in a row would overflow the stack.
    fn drop(&mut self) {
        // Inline for short chains: dropping a node usually allocates nothing.
        let mut stack: Inputs = match self.inputs.get_mut() {
            Ok(inputs) => inputs.take().unwrap_or_default(),
            Err(poisoned) => poisoned.into_inner().take().unwrap_or_default(),
        };
        while let Some(t) = stack.pop() {
            if let Some(inputs) = t.into_unique_node_inputs() {
                stack.extend(inputs);
            }
        }
    }
}
