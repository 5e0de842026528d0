//! Compiles every generated kernel for GPU 0 into the disk kernel cache, on all cores, so that
//! later programs load binaries instead of compiling each kernel at its first launch (about
//! 0.2 s each, one at a time). `ci/gpu-check` runs it first. Prints one line; exit status 2 when
//! the GPU cannot be opened, 1 when a kernel does not compile.
//!
//! Usage: `warm_kernels [threads]` (default: the available cores).

use std::time::Instant;

use nabla_cuda::DeviceApi;

fn main() {
    let threads = std::env::args()
        .nth(1)
        .map(|t| t.parse::<usize>().expect("warm_kernels [threads]: threads is a number"))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let backend = nabla_cuda::init(0).unwrap_or_else(|e| {
        eprintln!("warm_kernels: {e}");
        std::process::exit(2);
    });
    let device = backend.api();
    println!("warm_kernels: memory: {}", device.allocator_info());
    let specs = nabla_kernels::catalogue();
    let start = Instant::now();
    match device.precompile(&specs, threads) {
        Ok(n) => println!(
            "warm_kernels: cuda:{} {}: {n} of {} kernels compiled in {:.1} s on {threads} threads (the rest were cached)",
            device.ordinal(),
            device.compiler_info(),
            specs.len(),
            start.elapsed().as_secs_f64()
        ),
        Err(e) => {
            eprintln!("warm_kernels: {e}");
            std::process::exit(1);
        }
    }
    println!("warm_kernels: libraries: {}", nabla_cuda::loaded_libraries().join(" "));
}
