//! The [`Plan`]s of the ring's collectives, for rank `r` of `n` (next is `r + 1`, previous is
//! `r - 1`, modulo `n`). Chunks are cut into segments of at most `seg` elements; a segment is
//! the unit of pipelining: it moves on as soon as it has arrived.
//!
//! - All-reduce (reduce-scatter, then all-gather): the buffer is cut into `n` chunks. In
//!   reduce-scatter step `s` (of `n - 1`) a rank sends chunk `r - s` and adds the incoming chunk
//!   `r - s - 1`; after it, rank `r` holds the full sum of chunk `r + 1`. In all-gather step `t`
//!   it sends chunk `r + 1 - t` and copies in chunk `r - t`. Each chunk's final sum is computed
//!   on exactly one rank and copied to the others, so every rank ends bit-identical.
//! - Broadcast: segments flow along the ring from the root, each forwarded on arrival.
//! - All-gather (of per-rank chunks of any sizes): step `t` sends chunk `r - t` and copies in
//!   chunk `r - t - 1`.

use std::ops::Range;

use crate::tcp::engine::{Combine, Plan, RecvOp, SendOp};

/// Chunk `c` of `n` over `len` elements: as equal as possible, in order.
pub(crate) fn even_chunks(len: usize, n: usize) -> Vec<Range<usize>> {
    (0..n).map(|c| c * len / n..(c + 1) * len / n).collect()
}

/// `range` cut into pieces of at most `seg` elements (one empty piece for an empty range, so
/// that every step has at least one operation to hang dependencies on).
fn segments(range: Range<usize>, seg: usize) -> Vec<Range<usize>> {
    if range.is_empty() {
        return vec![range];
    }
    (range.start..range.end)
        .step_by(seg.max(1))
        .map(|a| a..(a + seg.max(1)).min(range.end))
        .collect()
}

fn at(r: usize, back: usize, n: usize) -> usize {
    (r + n * 2 - back % n) % n
}

/// Where each step of a ring pass starts in the plan's lists, to hang later dependencies on.
struct PassSteps {
    first_send: Vec<usize>,
    first_recv: Vec<usize>,
}

/// Appends the `n - 1` steps of a ring pass over `chunks` (chunk `i` starts on rank `i`): in
/// step `t` rank `r` sends chunk `r - t` (received in the step before, except in the first)
/// and receives chunk `r - t - 1`, combining it with `combine`. Reduce-scatter is this pass
/// with `Add`; the all-gather of per-rank chunks, with `Copy`.
fn ring_pass(plan: &mut Plan, chunks: &[Range<usize>], r: usize, seg: usize, combine: Combine) -> PassSteps {
    let n = chunks.len();
    let mut steps = PassSteps {
        first_send: Vec::new(),
        first_recv: Vec::new(),
    };
    for t in 0..n - 1 {
        steps.first_send.push(plan.sends.len());
        for (k, piece) in segments(chunks[at(r, t, n)].clone(), seg).into_iter().enumerate() {
            let after_recv = (t > 0).then(|| steps.first_recv[t - 1] + k);
            plan.sends.push(SendOp {
                range: piece,
                after_recv,
            });
        }
        steps.first_recv.push(plan.recvs.len());
        for piece in segments(chunks[at(r, t + 1, n)].clone(), seg) {
            plan.recvs.push(RecvOp {
                range: piece,
                combine,
                after_send: None,
            });
        }
    }
    steps
}

/// The all-reduce of `len` elements on rank `r` of `n`.
pub(crate) fn all_reduce(len: usize, r: usize, n: usize, seg: usize) -> Plan {
    let chunks = even_chunks(len, n);
    let mut plan = Plan::default();
    if n < 2 {
        return plan;
    }
    let scatter = ring_pass(&mut plan, &chunks, r, seg, Combine::Add);
    // The first receive of the step before: reduce-scatter's last step for t = 0.
    let mut recv_before = scatter.first_recv[n - 2];
    for t in 0..n - 1 {
        // Chunk r + 1 - t is the chunk received in the step before.
        for (k, piece) in segments(chunks[(r + 1 + n - t) % n].clone(), seg)
            .into_iter()
            .enumerate()
        {
            plan.sends.push(SendOp {
                range: piece,
                after_recv: Some(recv_before + k),
            });
        }
        recv_before = plan.recvs.len();
        // Chunk r - t was sent in reduce-scatter step t: overwrite it only once that send is done.
        for (k, piece) in segments(chunks[at(r, t, n)].clone(), seg).into_iter().enumerate() {
            plan.recvs.push(RecvOp {
                range: piece,
                combine: Combine::Copy,
                after_send: Some(scatter.first_send[t] + k),
            });
        }
    }
    plan
}

/// The broadcast of `len` elements from `root` on rank `r` of `n`.
pub(crate) fn broadcast(len: usize, root: usize, r: usize, n: usize, seg: usize) -> Plan {
    let mut plan = Plan::default();
    if n < 2 {
        return plan;
    }
    let position = (r + n - root) % n;
    let pieces = segments(0..len, seg);
    if position > 0 {
        for piece in &pieces {
            plan.recvs.push(RecvOp {
                range: piece.clone(),
                combine: Combine::Copy,
                after_send: None,
            });
        }
    }
    if position < n - 1 {
        for (k, piece) in pieces.into_iter().enumerate() {
            plan.sends.push(SendOp {
                range: piece,
                after_recv: (position > 0).then_some(k),
            });
        }
    }
    plan
}

/// The all-gather on rank `r` of `chunks` (chunk `i` is rank `i`'s; `chunks.len()` ranks).
pub(crate) fn all_gather(chunks: &[Range<usize>], r: usize, seg: usize) -> Plan {
    let mut plan = Plan::default();
    if chunks.len() >= 2 {
        ring_pass(&mut plan, chunks, r, seg, Combine::Copy);
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the plans of all ranks against each other in memory, in lock step (every rank's
    /// send `i` pairs with its next rank's receive `i`), honouring the dependencies; returns the
    /// buffers. Panics when the plans cannot finish or disagree on sizes.
    fn simulate(mut bufs: Vec<Vec<i64>>, plans: &[Plan]) -> Vec<Vec<i64>> {
        let n = plans.len();
        let (mut sent, mut recvd) = (vec![0usize; n], vec![0usize; n]);
        let mut wire: Vec<std::collections::VecDeque<Vec<i64>>> = vec![Default::default(); n];
        loop {
            let mut moved = false;
            for r in 0..n {
                let p = &plans[r];
                if sent[r] < p.sends.len() && p.sends[sent[r]].after_recv.is_none_or(|d| d < recvd[r]) {
                    wire[(r + 1) % n].push_back(bufs[r][p.sends[sent[r]].range.clone()].to_vec());
                    sent[r] += 1;
                    moved = true;
                }
                if recvd[r] < p.recvs.len()
                    && p.recvs[recvd[r]].after_send.is_none_or(|d| d < sent[r])
                    && let Some(data) = wire[r].pop_front()
                {
                    let op = &p.recvs[recvd[r]];
                    assert_eq!(data.len(), op.range.len(), "rank {r} receive {} size", recvd[r]);
                    for (d, v) in bufs[r][op.range.clone()].iter_mut().zip(data) {
                        match op.combine {
                            Combine::Add => *d += v,
                            Combine::Copy => *d = v,
                        }
                    }
                    recvd[r] += 1;
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        for r in 0..n {
            assert_eq!(sent[r], plans[r].sends.len(), "rank {r} could not send everything");
            assert_eq!(recvd[r], plans[r].recvs.len(), "rank {r} could not receive everything");
        }
        bufs
    }

    #[test]
    fn all_reduce_plans_sum_for_every_size_and_segment() {
        for n in 2..=5 {
            for len in [0, 1, 3, 7, 64, 101] {
                for seg in [1, 4, 1000] {
                    let bufs: Vec<Vec<i64>> = (0..n)
                        .map(|r| (0..len).map(|i| (i * 10 + r * 1000) as i64).collect())
                        .collect();
                    let want: Vec<i64> = (0..len).map(|i| (0..n).map(|r| bufs[r][i]).sum()).collect();
                    let plans: Vec<Plan> = (0..n).map(|r| all_reduce(len, r, n, seg)).collect();
                    for (r, b) in simulate(bufs, &plans).into_iter().enumerate() {
                        assert_eq!(b, want, "n {n} len {len} seg {seg} rank {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn broadcast_and_all_gather_plans_deliver_every_byte() {
        for n in 2..=4 {
            for root in 0..n {
                let bufs: Vec<Vec<i64>> = (0..n).map(|r| vec![r as i64; 9]).collect();
                let plans: Vec<Plan> = (0..n).map(|r| broadcast(9, root, r, n, 2)).collect();
                for b in simulate(bufs, &plans) {
                    assert_eq!(b, vec![root as i64; 9]);
                }
            }
            let sizes = [3usize, 0, 5, 1];
            let mut bounds = Vec::new();
            let mut at = 0;
            for s in &sizes[..n] {
                bounds.push(at..at + s);
                at += s;
            }
            let bufs: Vec<Vec<i64>> = (0..n)
                .map(|r| {
                    let mut b = vec![-1i64; at];
                    b[bounds[r].clone()].iter_mut().for_each(|x| *x = r as i64);
                    b
                })
                .collect();
            let plans: Vec<Plan> = (0..n).map(|r| all_gather(&bounds, r, 2)).collect();
            let want: Vec<i64> = (0..n).flat_map(|r| vec![r as i64; sizes[r]]).collect();
            for b in simulate(bufs, &plans) {
                assert_eq!(b, want);
            }
        }
    }

    #[test]
    fn chunks_cover_the_buffer_in_order() {
        assert_eq!(even_chunks(10, 3), vec![0..3, 3..6, 6..10]);
        assert_eq!(even_chunks(1, 3), vec![0..0, 0..0, 0..1]);
        assert_eq!(segments(0..5, 2), vec![0..2, 2..4, 4..5]);
        assert_eq!(segments(3..3, 2), vec![3..3]);
    }
}
