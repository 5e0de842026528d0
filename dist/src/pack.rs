//! Moving gradients between leaves and flat host buckets: packing scales each gradient by the
//! rank's weight while it copies, so the all-reduce's sum is already the (weighted) mean;
//! unpacking cuts the reduced bucket back into tensors of the leaves' shapes and devices.
//!
//! These run on host memory, what the MPI transport reduces. A device transport (NCCL) packs on
//! the device instead; the bucket plan and the order of calls stay the same.

use nabla_core::storage::CpuBuffer;
use nabla_core::{DType, Tensor};

use crate::bucket::Bucket;
use crate::comm::HostVec;

/// The bucket's elements: each leaf's gradient (zeros where `None`) times `weight`, in the
/// bucket's packing order, in one pass over each gradient's host buffer. `grads[k]` belongs to
/// `bucket.leaves[k]`; `numels` gives every leaf's element count by leaf index.
pub(crate) fn pack(bucket: &Bucket, grads: &[Option<Tensor>], numels: &[usize], weight: f64) -> HostVec {
    match bucket.dtype {
        DType::F64 => {
            let mut out = Vec::with_capacity(bucket.numel);
            for (k, &leaf) in bucket.leaves.iter().enumerate() {
                match grads[k].as_ref().map(Tensor::to_host_buffer) {
                    Some(CpuBuffer::F64(v)) => out.extend(v.iter().map(|x| x * weight)),
                    Some(other) => panic!("nabla-dist: an f64 leaf has a {} gradient", other.dtype()),
                    None => out.resize(out.len() + numels[leaf], 0.0),
                }
            }
            HostVec::F64(out)
        }
        _ => {
            let w = weight as f32;
            let mut out = Vec::with_capacity(bucket.numel);
            for (k, &leaf) in bucket.leaves.iter().enumerate() {
                match grads[k].as_ref().map(Tensor::to_host_buffer) {
                    Some(CpuBuffer::F32(v)) => out.extend(v.iter().map(|x| x * w)),
                    Some(CpuBuffer::F16(v)) => out.extend(v.iter().map(|x| x.to_f32() * w)),
                    Some(CpuBuffer::BF16(v)) => out.extend(v.iter().map(|x| x.to_f32() * w)),
                    Some(other) => panic!("nabla-dist: an f32 bucket got a {} gradient", other.dtype()),
                    None => out.resize(out.len() + numels[leaf], 0.0),
                }
            }
            HostVec::F32(out)
        }
    }
}

/// The bucket's leaves' parts of `data`, as tensors shaped, typed and placed like `like[k]`
/// (the leaf `bucket.leaves[k]`). On the host, parts of the bucket's dtype are views into one
/// tensor that owns the reduced bucket: no copy; half leaves get their part rounded back.
pub(crate) fn unpack(bucket: &Bucket, data: HostVec, like: &[&Tensor]) -> Vec<Tensor> {
    let n = data.len();
    let whole = match data {
        HostVec::F32(v) => Tensor::from_vec(v, &[n]),
        HostVec::F64(v) => Tensor::from_vec(v, &[n]),
    };
    like.iter()
        .enumerate()
        .map(|(k, leaf)| {
            let start = bucket.offsets[k];
            let part = whole
                .slice_axis(0, Some(start as isize), Some((start + leaf.numel()) as isize), 1)
                .reshape(leaf.shape());
            let part = if part.dtype() == leaf.dtype() {
                part
            } else {
                part.cast(leaf.dtype())
            };
            part.to_device(leaf.device())
                .unwrap_or_else(|e| panic!("nabla-dist: moving a reduced gradient back to {}: {e}", leaf.device()))
        })
        .collect()
}
