//! Readable printouts of traced programs, one line per op.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;

use crate::tensor::Tensor;
use crate::trace::Level;

fn describe(t: &Tensor) -> String {
    format!("{}{:?}", t.dtype(), t.shape())
}

/// One line per recorded op reachable from `outputs`, oldest first:
/// `%7 = mul(%5, %6) : f32[3]`; untraced inputs print as `const f32[..]`.
pub fn format_graph(outputs: &[Tensor]) -> String {
    let mut nodes: BTreeMap<u64, Tensor> = BTreeMap::new();
    let mut stack: Vec<Tensor> = outputs.iter().filter(|t| t.is_traced()).cloned().collect();
    let mut seen = HashSet::new();
    while let Some(t) = stack.pop() {
        let node = t.node().expect("traced");
        if !seen.insert(node.id) {
            continue;
        }
        if let Some(inputs) = node.inputs.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            stack.extend(inputs.into_iter().filter(|i| i.is_traced()));
        }
        nodes.insert(node.id, t);
    }
    let mut s = String::new();
    for (id, t) in &nodes {
        let node = t.node().expect("traced");
        let inputs = node.inputs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let args = match inputs {
            None => "<freed>".to_string(),
            Some(list) => list
                .iter()
                .map(|i| match i.node_id() {
                    Some(n) => format!("%{n}"),
                    None => format!("const {}", describe(i)),
                })
                .collect::<Vec<_>>()
                .join(", "),
        };
        let name = node.rule.name();
        let extra = if t.is_grad_leaf() { " requires_grad" } else { "" };
        let _ = writeln!(s, "%{id} = {name}({args}) : {}{extra}", describe(t));
    }
    let outs: Vec<String> = outputs
        .iter()
        .map(|o| {
            o.node_id()
                .map_or_else(|| format!("const {}", describe(o)), |n| format!("%{n}"))
        })
        .collect();
    let _ = write!(s, "return {}", outs.join(", "));
    s
}

/// Traces `f` on leaves made from `args` and returns the printout of the program it ran (like
/// `jax.make_jaxpr`).
pub fn trace_graph(f: impl FnOnce(&[Tensor]) -> Vec<Tensor>, args: &[Tensor]) -> String {
    let level = Level::open();
    let leaves: Vec<Tensor> = args.iter().map(|a| a.leaf_of(&level, None)).collect();
    let outs = f(&leaves);
    level.close();
    format_graph(&outs)
}
