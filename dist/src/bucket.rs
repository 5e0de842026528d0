//! Bucket plans: which leaves' gradients travel together in one all-reduce. As in PyTorch DDP,
//! leaves are taken in reverse order (the order in which a backward sweep finishes them), one
//! dtype per bucket; the first bucket of each dtype is small (about 1 MiB) so that the first
//! all-reduce starts early, later ones are larger (about 25 MiB) so that each call is efficient.
//!
//! The dtype of a bucket is the one its gradients travel and are summed in: f64 for f64 leaves,
//! f32 for f32, f16 and bf16 leaves. Half gradients are summed in f32 (MPI has no half sum, and
//! a sum over many ranks in 16 bits loses what mixed precision keeps f32 master weights for).

use nabla_core::DType;

/// Default size of the first bucket of each dtype.
pub const FIRST_BUCKET_BYTES: usize = 1 << 20;
/// Default size of the later buckets.
pub const BUCKET_BYTES: usize = 25 << 20;

/// One bucket: the leaves whose gradients it carries, in the order they are packed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    /// The dtype its gradients travel in ([`wire_dtype`] of every leaf in it).
    pub dtype: DType,
    /// Leaf indices, in packing order.
    pub leaves: Vec<usize>,
    /// Offset of each leaf's elements in the bucket.
    pub offsets: Vec<usize>,
    /// Elements in all.
    pub numel: usize,
}

/// Buckets in launch order, and the bucket of each leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketPlan {
    /// Buckets, in the order every rank launches them.
    pub buckets: Vec<Bucket>,
    /// `bucket_of[leaf]` is the index of the bucket that carries `leaf`.
    pub bucket_of: Vec<usize>,
}

/// The dtype a gradient of `leaf` travels and is summed in: f64 stays f64, every other float
/// travels as f32.
pub fn wire_dtype(leaf: DType) -> DType {
    if leaf == DType::F64 { DType::F64 } else { DType::F32 }
}

/// Plans buckets for leaves given as (dtype, elements), in reverse leaf order. A leaf larger
/// than a bucket's size gets a bucket of its own.
pub fn plan(leaves: &[(DType, usize)], first_bucket_bytes: usize, bucket_bytes: usize) -> BucketPlan {
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut bucket_of = vec![usize::MAX; leaves.len()];
    // The open bucket of each dtype, and whether the dtype has closed one already.
    let mut open: Vec<(DType, usize, bool)> = Vec::new();
    for (leaf, &(leaf_dtype, numel)) in leaves.iter().enumerate().rev() {
        let dtype = wire_dtype(leaf_dtype);
        let bytes = numel * dtype.size_in_bytes();
        let slot = match open.iter().position(|(d, _, _)| *d == dtype) {
            Some(s) => s,
            None => {
                buckets.push(Bucket {
                    dtype,
                    leaves: Vec::new(),
                    offsets: Vec::new(),
                    numel: 0,
                });
                open.push((dtype, buckets.len() - 1, false));
                open.len() - 1
            }
        };
        let (_, mut b, mut closed_before) = open[slot];
        let cap = if closed_before {
            bucket_bytes
        } else {
            first_bucket_bytes
        };
        let used = buckets[b].numel * dtype.size_in_bytes();
        if !buckets[b].leaves.is_empty() && used + bytes > cap {
            buckets.push(Bucket {
                dtype,
                leaves: Vec::new(),
                offsets: Vec::new(),
                numel: 0,
            });
            b = buckets.len() - 1;
            closed_before = true;
        }
        let bucket = &mut buckets[b];
        bucket.offsets.push(bucket.numel);
        bucket.leaves.push(leaf);
        bucket.numel += numel;
        bucket_of[leaf] = b;
        open[slot] = (dtype, b, closed_before);
    }
    BucketPlan { buckets, bucket_of }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_order_first_bucket_small_later_large_one_dtype_each() {
        // Twelve f32 leaves of 100 KiB: the first bucket (1 MiB) takes the last ten, the
        // next one (300 KiB) the first two.
        let leaves: Vec<(DType, usize)> = (0..12).map(|_| (DType::F32, 25_600)).collect();
        let p = plan(&leaves, FIRST_BUCKET_BYTES, 300 * 1024);
        assert_eq!(p.buckets.len(), 2);
        assert_eq!(p.buckets[0].leaves, vec![11, 10, 9, 8, 7, 6, 5, 4, 3, 2]);
        assert_eq!(p.buckets[1].leaves, vec![1, 0]);
        assert_eq!(p.buckets[0].offsets[1], 25_600);
        assert_eq!(p.bucket_of[0], 1);
        assert_eq!(p.bucket_of[11], 0);
    }

    #[test]
    fn dtypes_never_share_a_bucket_and_big_leaves_stand_alone() {
        let leaves = vec![
            (DType::F64, 10),
            (DType::F32, 10),
            (DType::F32, 1 << 20),
            (DType::F64, 5),
        ];
        let p = plan(&leaves, 1024, 4096);
        for b in &p.buckets {
            assert!(b.leaves.iter().all(|&l| wire_dtype(leaves[l].0) == b.dtype));
        }
        // Leaf 2 (4 MiB) exceeds every cap: alone in its bucket.
        let b2 = &p.buckets[p.bucket_of[2]];
        assert_eq!(b2.leaves, vec![2]);
        // Every leaf is in exactly one bucket.
        let mut all: Vec<usize> = p.buckets.iter().flat_map(|b| b.leaves.clone()).collect();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3]);
        assert_eq!(
            p.buckets.iter().map(|b| b.numel).sum::<usize>(),
            10 + 10 + (1 << 20) + 5
        );
    }

    #[test]
    fn half_leaves_travel_in_f32_buckets_with_f32_leaves() {
        let leaves = vec![(DType::BF16, 100), (DType::F32, 10), (DType::F16, 7), (DType::F64, 3)];
        let p = plan(&leaves, 1 << 20, 1 << 20);
        assert_eq!(p.buckets.len(), 2);
        let f32_bucket = &p.buckets[p.bucket_of[0]];
        assert_eq!(f32_bucket.dtype, DType::F32);
        assert_eq!(f32_bucket.leaves, vec![2, 1, 0]);
        assert_eq!(f32_bucket.numel, 117);
        assert_eq!(p.buckets[p.bucket_of[3]].dtype, DType::F64);
    }
}
