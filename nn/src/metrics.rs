//! Losses and metrics for classification and regression.

use nabla_core::Tensor;

pub use nabla_core::{cross_entropy, mse};

/// Fraction of rows of `logits: [n, classes]` whose argmax equals the i64 `labels: [n]`.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> f64 {
    if logits.rank() != 2 || labels.shape() != &logits.shape()[..1] {
        panic!(
            "accuracy: logits {:?} must be [n, classes] and labels {:?} must be [n]",
            logits.shape(),
            labels.shape()
        );
    }
    let n = labels.numel();
    if n == 0 {
        return 0.0;
    }
    let hits = logits.argmax(Some(-1), false).eq(labels).sum_all().item::<i64>();
    hits as f64 / n as f64
}
