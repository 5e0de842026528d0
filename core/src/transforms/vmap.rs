//! `vmap`: the mapped axis of every argument becomes a physical batch axis tagged with a fresh
//! vmap level; every op works on the per-example (logical) shape and carries batch axes
//! through, aligning them by level, so derivative rules are batch-agnostic and vmap composes
//! with `vjp`, `jvp` and itself in any order.

use crate::shape::normalize_axis;
use crate::tensor::Tensor;
use crate::trace::{Rule, next_id};

/// Logical axis `axis` of `x` becomes the batch axis of vmap level `level` (a view).
pub(crate) fn to_batch(x: &Tensor, level: u64, axis: usize, size: usize) -> Tensor {
    debug_assert!(!x.batch().contains(&level), "level already present");
    let nb = x.nb();
    let rank = x.layout().rank();
    let j = x.batch().iter().filter(|&&l| l < level).count();
    let mut perm: Vec<usize> = (0..rank).filter(|&d| d != nb + axis).collect();
    perm.insert(j, nb + axis);
    let mut batch = x.batch().to_vec();
    batch.insert(j, level);
    let raw = x.raw().with_layout(x.layout().permute(&perm));
    Tensor::record_batched(raw, batch, &[x], || ToBatchRule { level, axis, size })
}

/// The batch axis of vmap level `level` becomes logical axis `axis` (a view); a tensor without
/// that level is broadcast to `size` along the new axis.
pub(crate) fn from_batch(x: &Tensor, level: u64, axis: usize, size: usize) -> Tensor {
    let Some(j) = x.batch().iter().position(|&l| l == level) else {
        let mut shape = x.shape().to_vec();
        shape.insert(axis, size);
        return x.expand_dims(axis as isize).broadcast_to(&shape);
    };
    let nb = x.nb();
    let rank = x.layout().rank();
    let mut perm: Vec<usize> = (0..rank).filter(|&d| d != j).collect();
    perm.insert(nb - 1 + axis, j);
    let mut batch = x.batch().to_vec();
    batch.remove(j);
    let raw = x.raw().with_layout(x.layout().permute(&perm));
    Tensor::record_batched(raw, batch, &[x], || FromBatchRule { level, axis, size })
}

/// The sum of `g` over its batch axis of vmap level `level` (which it has).
pub(crate) fn sum_out_level(g: &Tensor, level: u64) -> Tensor {
    let j = g
        .batch()
        .iter()
        .position(|&l| l == level)
        .expect("the level is present");
    let size = g.layout().shape[j];
    from_batch(g, level, 0, size).sum(0, false)
}

struct ToBatchRule {
    level: u64,
    axis: usize,
    size: usize,
}

impl Rule for ToBatchRule {
    fn name(&self) -> String {
        format!("vmap_in(level={}, axis={})", self.level, self.axis)
    }
    fn vjp(&self, _i: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(from_batch(ct, self.level, self.axis, self.size))]
    }
    fn jvp(&self, _i: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        let t = t[0].as_ref()?;
        Some(to_batch(t, self.level, self.axis, self.size))
    }
}

struct FromBatchRule {
    level: u64,
    axis: usize,
    size: usize,
}

impl Rule for FromBatchRule {
    fn name(&self) -> String {
        format!("vmap_out(level={}, axis={})", self.level, self.axis)
    }
    fn vjp(&self, _i: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(to_batch(ct, self.level, self.axis, self.size))]
    }
    fn jvp(&self, _i: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        Some(from_batch(t[0].as_ref()?, self.level, self.axis, self.size))
    }
}

/// Maps `f` over axis `in_axes[i]` of argument `i` (`None`: the argument is shared by every
/// example) and stacks every output along `out_axes[j]` (one entry serves all outputs;
/// negative counts from the end of the stacked output). Every mapped argument must have one size along its mapped axis.
pub fn vmap_many(
    f: impl FnOnce(&[Tensor]) -> Vec<Tensor>,
    args: &[Tensor],
    in_axes: &[Option<isize>],
    out_axes: &[isize],
) -> Vec<Tensor> {
    if in_axes.len() != args.len() {
        panic!(
            "vmap: {} in_axes given for {} arguments; pass one per argument (None for unmapped)",
            in_axes.len(),
            args.len()
        );
    }
    let mut size: Option<(usize, usize, usize)> = None;
    let mut axes = Vec::with_capacity(args.len());
    for (i, (x, ax)) in args.iter().zip(in_axes).enumerate() {
        let Some(ax) = ax else {
            axes.push(None);
            continue;
        };
        let a = normalize_axis("vmap (in_axes)", *ax, x.rank());
        let n = x.shape()[a];
        match size {
            None => size = Some((n, i, a)),
            Some((m, j, b)) if m != n => panic!(
                "vmap: inconsistent sizes along the mapped axes: argument {j} has {m} along axis {b}, \
                 argument {i} has {n} along axis {a} (shapes {:?} and {:?})",
                args[j].shape(),
                x.shape()
            ),
            _ => {}
        }
        axes.push(Some(a));
    }
    let Some((size, _, _)) = size else {
        panic!("vmap: no argument is mapped (every in_axes entry is None); map at least one");
    };
    let level = next_id();
    let batched: Vec<Tensor> = args
        .iter()
        .zip(&axes)
        .map(|(x, a)| a.map_or_else(|| x.clone(), |a| to_batch(x, level, a, size)))
        .collect();
    let outs = f(&batched);
    if out_axes.len() != outs.len() && out_axes.len() != 1 {
        panic!(
            "vmap: {} out_axes given for {} outputs; pass one per output, or one for all",
            out_axes.len(),
            outs.len()
        );
    }
    outs.iter()
        .enumerate()
        .map(|(i, o)| {
            let ax = out_axes[i.min(out_axes.len() - 1)];
            from_batch(o, level, normalize_axis("vmap (out_axes)", ax, o.rank() + 1), size)
        })
        .collect()
}
