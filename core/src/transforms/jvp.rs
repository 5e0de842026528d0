//! Forward mode: `jvp` traces the function on fresh leaves and sweeps the recorded graph forward
//! with the tangents.

use super::{check_like, release_finished};
use crate::tensor::Tensor;
use crate::trace::{IdMap, Level, sweep};

/// Outputs of `f(primals)` and their tangents for `tangents` of the primals (one per primal,
/// each of its primal's shape and dtype).
pub fn jvp_many(
    f: impl FnOnce(&[Tensor]) -> Vec<Tensor>,
    primals: &[Tensor],
    tangents: &[Tensor],
) -> (Vec<Tensor>, Vec<Tensor>) {
    if primals.len() != tangents.len() {
        panic!(
            "jvp: {} tangents given for {} primals; pass one per primal",
            tangents.len(),
            primals.len()
        );
    }
    for (i, (t, p)) in tangents.iter().zip(primals).enumerate() {
        check_like("jvp", "tangent", i, t, p);
    }
    let level = Level::open();
    let leaves: Vec<Tensor> = primals.iter().map(|p| p.leaf_of(&level, None)).collect();
    let outputs = f(&leaves);
    level.close();
    let seeds: IdMap<Tensor> = leaves
        .iter()
        .zip(tangents)
        .map(|(l, t)| (l.node_id().expect("leaf"), t.clone()))
        .collect();
    let out_tangents = sweep::forward(&outputs, level.id(), seeds);
    let tangents_out = outputs
        .iter()
        .zip(out_tangents)
        .map(|(o, t)| release_finished(&t.unwrap_or_else(|| o.zeros_like())))
        .collect();
    (outputs.iter().map(release_finished).collect(), tangents_out)
}
