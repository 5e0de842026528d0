//! Keeping freed memory for reuse. Every op returns a new buffer, and a training step frees
//! and allocates the same large buffers again and again. glibc's malloc serves blocks above its
//! mmap threshold (at most 32 MiB by default) from fresh pages and returns them to the system when
//! freed, so each step paid a page fault per 4 KiB for every large intermediate: a fifth of
//! the time of a conv2d or a transformer block (measured with perf; docs/benchmarks.md). Raising
//! the mmap and trim thresholds makes malloc keep freed blocks in its heap, as PyTorch's
//! caching allocator keeps GPU blocks. The process then holds on to its peak memory.
//! `NABLA_CPU_RELEASE_MEMORY=1` keeps glibc's defaults.

/// Set when the thresholds were raised (for tests and the startup line).
static RAISED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Raises glibc's mmap and trim thresholds once per process, unless
/// `NABLA_CPU_RELEASE_MEMORY=1`. Returns whether they are raised. Elsewhere than on glibc it
/// does nothing and returns false.
pub fn keep_freed_memory() -> bool {
    *RAISED.get_or_init(|| {
        let release = std::env::var("NABLA_CPU_RELEASE_MEMORY").is_ok_and(|v| v == "1");
        !release && raise_thresholds()
    })
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn raise_thresholds() -> bool {
    use std::ffi::c_int;
    // glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_MMAP_THRESHOLD: c_int = -3;
    unsafe extern "C" {
        fn mallopt(param: c_int, value: c_int) -> c_int;
    }
    // SAFETY: mallopt only changes malloc's tuning parameters; any value is accepted or refused
    // (it returns 0).
    unsafe { mallopt(M_MMAP_THRESHOLD, c_int::MAX) == 1 && mallopt(M_TRIM_THRESHOLD, c_int::MAX) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn raise_thresholds() -> bool {
    false
}
