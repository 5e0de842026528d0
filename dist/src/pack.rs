//! Moving gradients between leaves and flat host buckets: packing scales each gradient by the
//! rank's weight while it copies, so the all-reduce's sum is already the (weighted) mean;
//! unpacking cuts the reduced bucket back into tensors of the leaves' shapes and devices.
//!
//! Host leaves are packed on the host, in one pass, for the host transports. Leaves on a device
//! are packed there with tensor ops ([`pack_tensor`]): the bucket then goes to the device
//! transport (NCCL) as it is, or to the host in one copy per bucket instead of one per leaf.
//! The bucket plan and the order of calls are the same either way, and so are the bits: each
//! element is cast to the bucket's dtype and then scaled, as on the host.

use nabla_core::storage::CpuBuffer;
use nabla_core::{DType, Device, Tensor};

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

/// The bucket as one flat tensor on `device`, made there with tensor ops: each leaf's gradient
/// (zeros where `None`) cast to the bucket's dtype, flattened and times `weight`.
pub(crate) fn pack_tensor(
    bucket: &Bucket,
    grads: &[Option<Tensor>],
    numels: &[usize],
    weight: f64,
    device: Device,
) -> Tensor {
    // The product is a new buffer, as a device transport needs, even for a bucket of one leaf.
    concat_bucket(bucket, grads, numels, device) * weight
}

/// [`pack_tensor`] before the weighting: the gradients cast to the bucket's dtype, flattened
/// and joined (for callers that weight the bucket later, inside a recorded step).
pub(crate) fn concat_bucket(bucket: &Bucket, grads: &[Option<Tensor>], numels: &[usize], device: Device) -> Tensor {
    let parts: Vec<Tensor> = bucket
        .leaves
        .iter()
        .enumerate()
        .map(|(k, &leaf)| match &grads[k] {
            Some(g) => g.stop_gradient().reshape([-1]).cast(bucket.dtype),
            None => Tensor::zeros(&[numels[leaf]], bucket.dtype)
                .to_device(device)
                .unwrap_or_else(|e| panic!("nabla-dist: zeros for a gradient on {device}: {e}")),
        })
        .collect();
    nabla_core::concatenate(&parts, 0)
}

/// A packed bucket's elements on the host (one copy from its device).
pub(crate) fn to_host_vec(packed: &Tensor) -> HostVec {
    match packed.to_host_buffer() {
        CpuBuffer::F32(v) => HostVec::F32(std::sync::Arc::unwrap_or_clone(v)),
        CpuBuffer::F64(v) => HostVec::F64(std::sync::Arc::unwrap_or_clone(v)),
        other => panic!("nabla-dist: a bucket packed as {}", other.dtype()),
    }
}

/// A reduced host bucket as a flat tensor, on `device` (one copy to it).
pub(crate) fn host_vec_tensor(data: HostVec, device: Device) -> Tensor {
    let n = data.len();
    let whole = match data {
        HostVec::F32(v) => Tensor::from_vec(v, &[n]),
        HostVec::F64(v) => Tensor::from_vec(v, &[n]),
    };
    whole
        .to_device(device)
        .unwrap_or_else(|e| panic!("nabla-dist: moving a reduced bucket to {device}: {e}"))
}

/// The bucket's leaves' parts of the reduced bucket `whole`, as tensors shaped and typed like
/// `like[k]` (the leaf `bucket.leaves[k]`), on `whole`'s device. Parts of the bucket's dtype are
/// views into `whole`: no copy; half leaves get their part rounded back.
pub(crate) fn unpack(bucket: &Bucket, whole: &Tensor, like: &[&Tensor]) -> Vec<Tensor> {
    like.iter()
        .enumerate()
        .map(|(k, leaf)| {
            let start = bucket.offsets[k];
            let part = whole
                .slice_axis(0, Some(start as isize), Some((start + leaf.numel()) as isize), 1)
                .reshape(leaf.shape());
            // Both are no-ops when the part is already the leaf's dtype and on its device (a
            // bucket whose leaves live on different devices travels through the host).
            part.cast(leaf.dtype())
                .to_device(leaf.device())
                .unwrap_or_else(|e| panic!("nabla-dist: moving a reduced gradient to {}: {e}", leaf.device()))
        })
        .collect()
}
