//! [`BlockCache`]: the free lists of the caching allocator that device memory falls back on
//! when the driver's stream-ordered pool (`cuMemAllocAsync`) is missing or refuses to work
//! (a virtual GPU, a sandbox that does not pass the pool's calls through). Blocks are kept by
//! size class and handed out again in stream order, as PyTorch's caching allocator does on one
//! stream; the device only sees `cuMemAlloc` for a size class the cache has no block of, and
//! `cuMemFree` when the cache is released (before an out-of-memory retry, and at the end).
//!
//! Pure bookkeeping over addresses, so it is tested without a GPU.

use std::collections::HashMap;

/// The smallest block handed out: small tensors (scalars, biases) share one size class.
pub const MIN_BLOCK: usize = 512;

/// The block size that serves a request of `bytes`: at least [`MIN_BLOCK`], then rounded up
/// to a multiple of an eighth of the power of two at or above it (and of [`MIN_BLOCK`]), so
/// that a block is less than a quarter (or [`MIN_BLOCK`] bytes) larger than the request it
/// serves, and requests of nearby sizes (a batch's last, shorter slice) share blocks.
pub fn size_class(bytes: usize) -> usize {
    if bytes <= MIN_BLOCK {
        return MIN_BLOCK;
    }
    let Some(pow) = bytes.checked_next_power_of_two() else {
        return bytes;
    };
    let step = (pow / 8).max(MIN_BLOCK);
    bytes.div_ceil(step).saturating_mul(step)
}

/// Free device blocks by size class.
#[derive(Debug, Default)]
pub struct BlockCache {
    free: HashMap<usize, Vec<u64>>,
    cached_bytes: usize,
}

impl BlockCache {
    /// An empty cache.
    pub fn new() -> BlockCache {
        BlockCache::default()
    }

    /// A cached block of exactly size class `class`, if one is free.
    pub fn take(&mut self, class: usize) -> Option<u64> {
        let list = self.free.get_mut(&class)?;
        let block = list.pop()?;
        self.cached_bytes -= class;
        Some(block)
    }

    /// Returns block `ptr` of size class `class` for reuse.
    pub fn give(&mut self, class: usize, ptr: u64) {
        self.free.entry(class).or_default().push(ptr);
        self.cached_bytes += class;
    }

    /// Bytes held in free blocks.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes
    }

    /// Empties the cache, returning every free block and its size class (for `cuMemFree`).
    pub fn drain(&mut self) -> Vec<(u64, usize)> {
        self.cached_bytes = 0;
        self.free
            .drain()
            .flat_map(|(class, ptrs)| ptrs.into_iter().map(move |p| (p, class)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_the_request_and_waste_at_most_a_quarter() {
        let mut previous = 0;
        for bytes in (1..70_000).chain([1 << 20, (1 << 20) + 1, 3 << 30, (1 << 34) + 12345]) {
            let class = size_class(bytes);
            assert!(class >= bytes, "{bytes} -> {class}");
            assert!(class >= previous, "classes grow with the request: {bytes} -> {class}");
            previous = class;
            if bytes > MIN_BLOCK {
                let allowed = (bytes / 4).max(MIN_BLOCK);
                assert!(class - bytes < allowed, "{bytes} -> {class} wastes more than {allowed}");
                assert_eq!(class % MIN_BLOCK, 0, "{bytes} -> {class}");
            }
        }
        assert_eq!(size_class(1), MIN_BLOCK);
        assert_eq!(size_class(MIN_BLOCK), MIN_BLOCK);
        assert_eq!(size_class(MIN_BLOCK + 1), 2 * MIN_BLOCK);
        // 2^20 + 1 lies under 2^21, whose eighth is 256 KiB.
        assert_eq!(size_class((1 << 20) + 1), (1 << 20) + (1 << 18));
        // No overflow near the top of the address space.
        assert_eq!(size_class(usize::MAX - 3), usize::MAX - 3);
    }

    #[test]
    fn nearby_sizes_share_a_class_and_distant_ones_do_not() {
        assert_eq!(size_class(1_000_000), size_class(1_000_100));
        assert_ne!(size_class(1_000_000), size_class(2_000_000));
    }

    #[test]
    fn blocks_come_back_by_class_and_drain_returns_them_all() {
        let mut cache = BlockCache::new();
        assert_eq!(cache.take(512), None);
        cache.give(512, 0x1000);
        cache.give(512, 0x2000);
        cache.give(4096, 0x9000);
        assert_eq!(cache.cached_bytes(), 512 * 2 + 4096);
        // Last in, first out: the block most recently freed is the warmest.
        assert_eq!(cache.take(512), Some(0x2000));
        assert_eq!(cache.take(1024), None, "no block of another class is handed out");
        assert_eq!(cache.cached_bytes(), 512 + 4096);
        let mut drained = cache.drain();
        drained.sort();
        assert_eq!(drained, vec![(0x1000, 512), (0x9000, 4096)]);
        assert_eq!(cache.cached_bytes(), 0);
        assert_eq!(cache.take(512), None);
    }
}
