//! Sharding a global batch over the ranks, and the weight each rank's gradient gets so that
//! uneven shards still average to the gradient of the mean over the global batch.

/// This rank's part of a global batch: a contiguous range of examples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// First example.
    pub start: usize,
    /// Number of examples.
    pub len: usize,
    /// Examples in the global batch.
    pub global: usize,
}

impl Shard {
    /// Rank `rank`'s part of a batch of `global` examples over `world` ranks: sizes differ by
    /// at most one, the first `global % world` ranks taking one more.
    pub fn of(global: usize, rank: usize, world: usize) -> Shard {
        assert!(world > 0 && rank < world, "Shard::of: rank {rank} of {world} ranks");
        let base = global / world;
        let extra = global % world;
        Shard {
            start: rank * base + rank.min(extra),
            len: base + usize::from(rank < extra),
            global,
        }
    }

    /// The examples, as a range.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.start..self.start + self.len
    }

    /// `len / global`: the weight of this rank's mean-loss gradient in the global mean (0 for
    /// an empty batch, which has no mean to weigh).
    pub fn weight(&self) -> f64 {
        if self.global == 0 {
            0.0
        } else {
            self.len as f64 / self.global as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Shard;

    #[test]
    fn shards_cover_the_batch_once_and_weights_sum_to_one() {
        for global in [1usize, 7, 32, 29, 100] {
            for world in 1..=4usize {
                let shards: Vec<Shard> = (0..world).map(|r| Shard::of(global, r, world)).collect();
                let mut next = 0;
                for s in &shards {
                    assert_eq!(s.start, next);
                    next += s.len;
                }
                assert_eq!(next, global);
                let w: f64 = shards.iter().map(Shard::weight).sum();
                assert!((w - 1.0).abs() < 1e-12);
            }
        }
        assert_eq!(
            Shard::of(32, 2, 3),
            Shard {
                start: 22,
                len: 10,
                global: 32
            }
        );
    }
}
