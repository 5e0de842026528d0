//! The CPU backend keeps freed memory for reuse (`backend::cpu::memory`): a large buffer freed
//! and allocated again must not fault its pages in again. Counted with the thread's minor page
//! faults. With `NABLA_CPU_RELEASE_MEMORY=1` (glibc's defaults) the same test checks the
//! opposite, which shows that it measures what it claims.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn a_freed_large_buffer_is_reused_without_faulting_its_pages_again() {
    use nabla_core::Tensor;

    fn minor_faults() -> i64 {
        // SAFETY: getrusage fills the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) }, 0);
        usage.ru_minflt
    }
    // 32 MiB (a freed block this size is returned to the system by glibc's defaults), written
    // one byte per page.
    let bytes = 32 << 20;
    let cycle = || {
        let mut v = vec![0u8; bytes];
        for i in (0..bytes).step_by(4096) {
            v[i] = 1;
        }
        std::hint::black_box(&v);
    };
    // Any op starts the CPU backend, which sets malloc up.
    let _ = Tensor::from_vec(vec![1.0f32], &[1]) + 1.0;
    let release = std::env::var("NABLA_CPU_RELEASE_MEMORY").is_ok_and(|v| v == "1");
    assert_eq!(nabla_core::backend::cpu::memory::keep_freed_memory(), !release);
    cycle();
    let before = minor_faults();
    cycle();
    let faults = minor_faults() - before;
    let pages = (bytes / 4096) as i64;
    if release {
        assert!(
            faults > pages / 2,
            "glibc's defaults should fault the pages again: {faults} of {pages}"
        );
    } else {
        assert!(
            faults < pages / 20,
            "the second 32 MiB buffer faulted {faults} of its {pages} pages"
        );
    }
    println!("second cycle: {faults} page faults for {pages} pages (release = {release})");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
#[test]
fn a_freed_large_buffer_is_reused_without_faulting_its_pages_again() {
    println!("SKIPPED: keeping freed memory is a glibc setting; this is not glibc");
}
