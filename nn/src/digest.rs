//! A stable digest of tensor bytes, for comparing runs exactly (`param_checksum`).

use nabla_core::Tensor;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a (64-bit) of `bytes`, continuing from `state`.
pub fn fnv1a(state: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(state, |h, &b| (h ^ b as u64).wrapping_mul(FNV_PRIME))
}

/// Digest of tensors: for each, its dtype, shape and little-endian element bytes, in order.
/// Equal exactly when the values are bit-identical (on any machine).
pub fn tensors_digest(tensors: &[Tensor]) -> u64 {
    let mut h = FNV_OFFSET;
    for t in tensors {
        h = fnv1a(h, t.dtype().name().as_bytes());
        for &d in t.shape() {
            h = fnv1a(h, &(d as u64).to_le_bytes());
        }
        h = fnv1a(h, &t.to_host_buffer().to_le_bytes());
    }
    h
}

/// [`tensors_digest`] as 16 hex digits.
pub fn digest_hex(tensors: &[Tensor]) -> String {
    format!("{:016x}", tensors_digest(tensors))
}
