//! What the CUDA examples share: the benchmark model of `ci/gpu-check` (a 784-512-512-10
//! tanh/relu/log-softmax MLP), the same as `examples/bench.rs`'s `mlp_step`.

use nabla_core::Tensor;

/// The MLP's mean cross-entropy on one-hot targets `y`.
pub fn mlp_loss(params: &[(Tensor, Tensor); 3], x: &Tensor, y: &Tensor) -> Tensor {
    let [(w1, b1), (w2, b2), (w3, b3)] = params;
    let h = (x.matmul(w1) + b1).tanh();
    let h = (h.matmul(w2) + b2).relu();
    let logp = (h.matmul(w3) + b3).log_softmax(-1);
    -(y * logp).sum(-1, false).mean_all()
}
