//! Shared pieces of the dist tests: ranks as threads, a small model, its data.

#![allow(dead_code)]

use std::time::Duration;

use nabla_core::{DType, Rng, Tensor};
use nabla_dist::{ProcessGroup, ThreadComm};

/// Runs `f` on `n` ranks (threads), each with its own group; returns their results by rank.
pub fn on_ranks<T: Send>(n: usize, f: impl Fn(ProcessGroup) -> T + Sync) -> Vec<T> {
    let comms = ThreadComm::world(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = comms
            .into_iter()
            .map(|c| {
                let f = &f;
                s.spawn(move || f(ProcessGroup::new(Box::new(c), Duration::from_secs(120), "world")))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread panicked"))
            .collect()
    })
}

/// Parameters of a two-layer network: w1 [4, 5], b1 [5], w2 [5, 2] (f64).
pub fn params(seed: u64) -> Vec<Tensor> {
    let mut rng = Rng::new(seed);
    vec![
        rng.normal(&[4, 5], 0.0, 0.5, DType::F64),
        rng.normal(&[5], 0.0, 0.1, DType::F64),
        rng.normal(&[5, 2], 0.0, 0.5, DType::F64),
    ]
}

/// A global batch of `n` examples: inputs [n, 4], targets [n, 2].
pub fn batch(n: usize, seed: u64) -> (Tensor, Tensor) {
    let mut rng = Rng::new(seed + 1000);
    (
        rng.normal(&[n, 4], 0.0, 1.0, DType::F64),
        rng.normal(&[n, 2], 0.0, 1.0, DType::F64),
    )
}

/// Mean squared error of the network on (x, y).
pub fn loss(p: &[Tensor], x: &Tensor, y: &Tensor) -> Tensor {
    let h = (x.matmul(&p[0]) + &p[1]).tanh();
    (h.matmul(&p[2]) - y).square().mean_all()
}

/// Rows `range` of `t`.
pub fn rows(t: &Tensor, range: std::ops::Range<usize>) -> Tensor {
    t.slice_axis(0, Some(range.start as isize), Some(range.end as isize), 1)
}

/// The largest absolute difference between two tensors' values.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    a.to_vec::<f64>()
        .iter()
        .zip(b.to_vec::<f64>())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}
