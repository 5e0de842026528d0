//! temp
use nabla as nb;
use nb::Tensor;
fn main() {
    let x = nb::tensor([0.0f32, 1.0, 2.0, 3.0]);
    let g = nb::grad(|x: &Tensor| (x.sin() * x + x.square()).sum_all());
    for _ in 0..2000 {
        std::hint::black_box(g(std::hint::black_box(&x)));
    }
}
