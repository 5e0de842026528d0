//! Jacobians at the benchmark's size cost a small multiple of one pass, not 256 passes:
//! `jacfwd` / `jacrev` of `tanh(W x)` with W 256x256 (f32), against one forward pass, one
//! `vjp` (forward + backward) pass, and the row-by-row loop they replace.
//!
//! Run: `cargo run --release --example bench_jacobian`

use std::hint::black_box;

#[path = "timing/mod.rs"]
mod timing;
use timing::median_ms;

use nabla as nb;
use nb::{DType, Tensor};

fn main() {
    let n = 256;
    let mut rng = nb::Rng::new(0);
    let w = rng.normal(&[n, n], 0.0, 1.0 / (n as f64).sqrt(), DType::F32);
    let x = rng.normal(&[n], 0.0, 1.0, DType::F32);
    let f = |x: &Tensor| w.matmul(x).tanh();
    let forward = median_ms(1, 200, || {
        black_box(f(&x));
    });
    let one_vjp = median_ms(1, 200, || {
        let (out, pb) = nb::vjp(f, &x);
        black_box(pb(&out.ones_like()));
    });
    let jf = nb::jacfwd(f);
    let jacfwd = median_ms(1, 50, || {
        black_box(jf(&x));
    });
    let jr = nb::jacrev(f);
    let jacrev = median_ms(1, 50, || {
        black_box(jr(&x));
    });
    let rows = median_ms(1, 5, || {
        let (out, pb) = nb::vjp(f, &x);
        for i in 0..n {
            let mut e = vec![0.0f32; n];
            e[i] = 1.0;
            black_box(pb(&Tensor::from_vec(e, out.shape())));
        }
    });
    println!("tanh(W x), W f32[256, 256], median ms");
    println!("{:<28} {:>10} {:>14}", "case", "ms", "x one vjp pass");
    for (name, v) in [
        ("forward pass", forward),
        ("one vjp pass", one_vjp),
        ("jacfwd_256", jacfwd),
        ("jacrev_256", jacrev),
        ("256 single vjp pulls (loop)", rows),
    ] {
        println!("{name:<28} {v:>10.3} {:>14.1}", v / one_vjp);
    }
}
