//! Walks over a recorded graph: collection of one level's nodes in topological order, the
//! reverse (VJP) sweep and the forward (JVP) sweep.

use crate::tensor::Tensor;
use crate::trace::{IdMap, IdSet, Level, Rule};

fn in_level(t: &Tensor, level: u64) -> bool {
    t.node().is_some_and(|n| n.in_level(level))
}

/// The tensors reachable from `outputs` whose node belongs to `level`, in increasing node id
/// (a topological order); the walk does not pass through the nodes in `stops`.
pub(crate) fn collect(outputs: &[Tensor], level: u64, stops: &IdSet) -> Vec<Tensor> {
    // Sized for small graphs up front: growing these was a visible cost of tiny calls.
    let mut seen = IdSet::with_capacity_and_hasher(32, Default::default());
    let mut order = Vec::with_capacity(32);
    let mut stack: Vec<Tensor> = outputs.iter().filter(|t| in_level(t, level)).cloned().collect();
    while let Some(t) = stack.pop() {
        let node = t.node().expect("filtered to traced tensors");
        if !seen.insert(node.id) {
            continue;
        }
        if !stops.contains(&node.id) {
            node.for_each_input(|inp| {
                if in_level(inp, level) && !seen.contains(&inp.node_id().expect("traced")) {
                    stack.push(inp.clone());
                }
            });
        }
        order.push(t);
    }
    order.sort_by_key(|t| t.node_id());
    order
}

/// Where a cotangent came from, for the message of an internal shape error (named lazily: a
/// rule's name is a formatted string).
enum Source<'a> {
    Output,
    Rule(&'a dyn Rule),
}

fn accumulate(map: &mut IdMap<Tensor>, target: &Tensor, g: Tensor, source: Source, level: &Level) {
    // A vmap opened inside the traced function batches values that the target was shared by:
    // its cotangent is the sum over that batch. Other vmap levels (enclosing ones, or one that
    // maps the pullback itself, as jacrev does) stay.
    let mut g = g;
    for lv in g.batch().to_vec() {
        if !target.batch().contains(&lv) && level.encloses(lv) {
            g = crate::transforms::vmap::sum_out_level(&g, lv);
        }
    }
    if g.shape() != target.shape() {
        panic!(
            "internal error in the derivative rule of `{}`: cotangent of shape {:?} for an input of shape {:?}",
            match source {
                Source::Output => "output".to_string(),
                Source::Rule(r) => r.name(),
            },
            g.shape(),
            target.shape()
        );
    }
    let g = if g.dtype() == target.dtype() {
        g
    } else {
        g.cast(target.dtype())
    };
    let id = target.node_id().expect("traced");
    let sum = match map.remove(&id) {
        Some(prev) => prev + g,
        None => g,
    };
    map.insert(id, sum);
}

/// What a reverse sweep does with the graph behind it: each node's inputs are let go of as soon
/// as the node's rule has run, so an activation is freed when the last rule that reads it is
/// done (PyTorch frees saved tensors the same way), rather than when the sweep ends.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Release {
    /// Keep the graph (the pullback may be called again, or `retain_graph`).
    Keep,
    /// Free the nodes that belong to the swept level alone (a pullback called once: nodes that
    /// an enclosing transform also traced stay for its sweep).
    OwnLevel,
    /// Free every node swept except the stops (`backward` without `retain_graph`).
    AllButStops,
}

/// The reverse sweep: cotangents of every node of `level` reached from `seeds`
/// (output, cotangent) pairs. Nodes in `stops` (the level's leaves) receive cotangents but do
/// not pass them on. Returns the cotangents of the stop nodes, by node id.
pub(crate) fn reverse(seeds: &[(Tensor, Tensor)], level: &Level, stops: &IdSet, release: Release) -> IdMap<Tensor> {
    reverse_reporting(seeds, level, stops, None, release)
}

/// Called by [`reverse_reporting`] with a stop node and its cotangent as soon as that
/// cotangent is final.
pub(crate) type OnLeafReady<'a> = &'a mut dyn FnMut(&Tensor, &Tensor);

/// [`reverse`], telling `on_ready` about each stop node as soon as its cotangent is final:
/// when the last rule that feeds it has run, rather than when the sweep reaches the node
/// (leaves are the oldest nodes, so the sweep reaches them last). The order depends only on
/// the recorded graph, so every rank of a data-parallel job that traces the same function
/// sees the same order. `release` says which nodes let go of their inputs once swept.
pub(crate) fn reverse_reporting(
    seeds: &[(Tensor, Tensor)],
    level: &Level,
    stops: &IdSet,
    mut on_ready: Option<OnLeafReady>,
    release: Release,
) -> IdMap<Tensor> {
    let outputs: Vec<Tensor> = seeds.iter().map(|(o, _)| o.clone()).collect();
    let mut order = collect(&outputs, level.id(), stops);
    drop(outputs);
    let mut cts: IdMap<Tensor> = IdMap::with_capacity_and_hasher(order.len(), Default::default());
    for (o, c) in seeds {
        if in_level(o, level.id()) {
            accumulate(&mut cts, o, c.clone(), Source::Output, level);
        }
    }
    // Rules still to run that feed each stop node (only counted when someone listens).
    let mut pending: IdMap<u32> = IdMap::default();
    if on_ready.is_some() {
        for t in &order {
            let node = t.node().expect("collected tensors are traced");
            if stops.contains(&node.id) {
                continue;
            }
            node.for_each_input(|inp| {
                if let Some(id) = inp
                    .node_id()
                    .filter(|id| stops.contains(id) && in_level(inp, level.id()))
                {
                    *pending.entry(id).or_insert(0) += 1;
                }
            });
        }
    }
    let mut leaf_cts = IdMap::default();
    let mut finish_leaf = |leaf: &Tensor, cts: &mut IdMap<Tensor>, leaf_cts: &mut IdMap<Tensor>| {
        let id = leaf.node_id().expect("traced");
        if let Some(ct) = cts.remove(&id) {
            if let Some(f) = on_ready.as_mut() {
                f(leaf, &ct);
            }
            leaf_cts.insert(id, ct);
        }
    };
    // Popped from the end (the reverse order), so the sweep holds no swept tensor either.
    while let Some(t) = order.pop() {
        let node = t.node().expect("collected tensors are traced");
        if stops.contains(&node.id) {
            finish_leaf(&t, &mut cts, &mut leaf_cts);
            continue;
        }
        let ct = cts.remove(&node.id);
        if ct.is_some() || !pending.is_empty() {
            let inputs = node.inputs();
            if let Some(ct) = ct {
                let wanted: smallvec::SmallVec<[bool; 3]> = inputs.iter().map(|i| in_level(i, level.id())).collect();
                let grads = node.rule.vjp_wanted(&inputs, &t, &ct, &wanted);
                for (inp, g) in inputs.iter().zip(grads) {
                    if let Some(g) = g
                        && in_level(inp, level.id())
                    {
                        accumulate(&mut cts, inp, g, Source::Rule(&node.rule), level);
                    }
                }
            }
            if !pending.is_empty() {
                for inp in &inputs {
                    let Some(id) = inp.node_id() else { continue };
                    if let Some(left) = pending.get_mut(&id) {
                        *left -= 1;
                        if *left == 0 {
                            pending.remove(&id);
                            finish_leaf(inp, &mut cts, &mut leaf_cts);
                        }
                    }
                }
            }
        }
        let free = match release {
            Release::Keep => false,
            Release::OwnLevel => node.levels.len() == 1 && node.in_level(level.id()),
            Release::AllButStops => true,
        };
        if free {
            // Later nodes (smaller ids) never read this one's inputs through it: the sweep is
            // past every node that consumes it.
            *node.inputs.lock().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }
    leaf_cts
}

/// The forward sweep: tangents of `outputs` given tangents of the level's leaves (by node id).
/// Returns the tangent of every output that depends on a leaf (`None` otherwise).
pub(crate) fn forward(outputs: &[Tensor], level: u64, leaf_tangents: IdMap<Tensor>) -> Vec<Option<Tensor>> {
    let stops: IdSet = leaf_tangents.keys().copied().collect();
    let order = collect(outputs, level, &stops);
    let mut tangents = leaf_tangents;
    for t in &order {
        let node = t.node().expect("collected tensors are traced");
        if stops.contains(&node.id) {
            continue;
        }
        let inputs = node.inputs();
        let ins: Vec<Option<Tensor>> = inputs
            .iter()
            .map(|i| {
                if in_level(i, level) {
                    i.node_id().and_then(|id| tangents.get(&id).cloned())
                } else {
                    None
                }
            })
            .collect();
        if ins.iter().all(|t| t.is_none()) {
            continue;
        }
        if let Some(out_t) = node.rule.jvp(&inputs, t, &ins) {
            if out_t.shape() != t.shape() {
                panic!(
                    "internal error in the derivative rule of `{}`: tangent of shape {:?} for an output of shape {:?}",
                    node.rule.name(),
                    out_t.shape(),
                    t.shape()
                );
            }
            let out_t = if out_t.dtype() == t.dtype() {
                out_t
            } else {
                out_t.cast(t.dtype())
            };
            tangents.insert(node.id, out_t);
        }
    }
    outputs
        .iter()
        .map(|o| {
            if in_level(o, level) {
                tangents.get(&o.node_id().expect("traced")).cloned()
            } else {
                None
            }
        })
        .collect()
}
