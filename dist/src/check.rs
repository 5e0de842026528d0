//! The check that every rank holds the same leaves (count, shapes, dtypes) before their
//! gradients or values are combined: without it, ranks would reduce buffers of different sizes,
//! which hangs or corrupts the collectives.

use nabla_core::Tensor;

use crate::error::{DistError, Result};
use crate::group::ProcessGroup;

/// One line per leaf: `shape dtype`.
fn describe(leaves: &[Tensor]) -> Vec<String> {
    leaves
        .iter()
        .map(|t| format!("{:?} {}", t.shape(), t.dtype()))
        .collect()
}

/// The differences between rank 0's leaves and another rank's, for the message.
fn differences(rank: usize, reference: &[String], other: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if reference.len() != other.len() {
        out.push(format!(
            "rank {rank} has {} leaves, rank 0 has {}",
            other.len(),
            reference.len()
        ));
    }
    for (i, (a, b)) in reference.iter().zip(other).enumerate() {
        if a != b {
            out.push(format!("leaf {i}: rank 0 has {a}, rank {rank} has {b}"));
        }
    }
    for (i, b) in other.iter().enumerate().skip(reference.len()) {
        out.push(format!("leaf {i}: only rank {rank} has it ({b})"));
    }
    for (i, a) in reference.iter().enumerate().skip(other.len()) {
        out.push(format!("leaf {i}: rank {rank} lacks it (rank 0 has {a})"));
    }
    out
}

/// Fails with a message listing every difference when the ranks' `leaves` differ in count,
/// shape or dtype. Collective: every rank must call it.
pub(crate) fn same_leaves_on_all_ranks(group: &ProcessGroup, leaves: &[Tensor], what: &str) -> Result<()> {
    let mine = describe(leaves).join("\n");
    let all = group.all_gather_bytes(mine.as_bytes())?;
    let parse = |b: &[u8]| -> Vec<String> {
        let s = String::from_utf8_lossy(b);
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('\n').map(str::to_string).collect()
        }
    };
    let reference = parse(&all[0]);
    let mut problems = Vec::new();
    for (rank, bytes) in all.iter().enumerate().skip(1) {
        problems.extend(differences(rank, &reference, &parse(bytes)));
    }
    if problems.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 12;
    let more = problems.len().saturating_sub(SHOWN);
    let mut msg = format!(
        "{what}: the ranks hold different leaves (every rank must build the same model):\n  {}",
        problems.iter().take(SHOWN).cloned().collect::<Vec<_>>().join("\n  ")
    );
    if more > 0 {
        msg.push_str(&format!("\n  ... and {more} more"));
    }
    Err(DistError::Mismatch(msg))
}

/// Fails naming the first leaf that is not a float (only those have gradients to reduce).
pub(crate) fn float_leaves(op: &str, leaves: &[Tensor]) -> Result<()> {
    match leaves.iter().enumerate().find(|(_, t)| !t.dtype().is_float()) {
        None => Ok(()),
        Some((i, t)) => Err(DistError::Usage(format!(
            "{op}: leaf {i} ({:?}) is {}; only f32 and f64 values have gradients to reduce",
            t.shape(),
            t.dtype()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::differences;

    #[test]
    fn differences_name_leaf_rank_and_both_values() {
        let a = vec!["[2, 3] f32".to_string(), "[3] f32".to_string()];
        let b = vec!["[2, 3] f32".to_string(), "[4] f32".to_string(), "[1] f64".to_string()];
        let d = differences(2, &a, &b);
        assert_eq!(d.len(), 3, "{d:?}");
        assert_eq!(d[0], "rank 2 has 3 leaves, rank 0 has 2");
        assert_eq!(d[1], "leaf 1: rank 0 has [3] f32, rank 2 has [4] f32");
        assert_eq!(d[2], "leaf 2: only rank 2 has it ([1] f64)");
        assert!(differences(1, &a, &a).is_empty());
    }
}
