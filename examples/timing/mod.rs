//! Timing helpers shared by the benchmark examples: the median of repeated runs, as the JAX
//! reference script measures.
#![allow(dead_code)]

use std::time::Instant;

/// Median wall time in milliseconds of `runs` calls of `f`, after `warm` warm-up calls.
pub fn median_ms(warm: usize, runs: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warm {
        f();
    }
    let mut ts: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ts.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    ts[runs / 2]
}

/// Median over `loops` repetitions of the mean time in microseconds of `calls` calls of `f`.
pub fn per_call_us(calls: usize, loops: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..20 {
        f();
    }
    let mut reps: Vec<f64> = (0..loops)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            t.elapsed().as_secs_f64() / calls as f64 * 1e6
        })
        .collect();
    reps.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    reps[loops / 2]
}
