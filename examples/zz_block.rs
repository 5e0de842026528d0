use nabla::nn::TransformerBlock;
use nabla as nb;
use nb::{DType, Rng};
use std::time::Instant;
fn main() {
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut rng = Rng::new(0);
    let block = TransformerBlock::new(512, 8, 0.0, &mut rng, DType::F32);
    let xs = rng.normal(&[16, 256, 512], 0.0, 1.0, DType::F32);
    let step = nb::value_and_grad(|b: &TransformerBlock| b.forward(&xs, true, None).square().mean_all());
    for _ in 0..reps {
        let t = Instant::now();
        drop(step(&block));
        println!("{:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    }
}
