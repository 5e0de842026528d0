//! What one small op costs with and without tracing (nanoseconds per op), and the cost of a
//! tiny `grad` call. A benchmark program, not a test: run it with
//! `cargo run --release --example bench_tracing`.

use std::hint::black_box;
use std::time::Instant;

use nabla as nb;
use nb::Tensor;

fn per_iter_ns(iters: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..iters / 10 {
        f();
    }
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        best = best.min(t.elapsed().as_nanos() as f64 / iters as f64);
    }
    best
}

fn main() {
    let x = nb::tensor([0.0, 1.0, 2.0, 3.0]);
    let y = nb::tensor([1.0, 1.0, 1.0, 1.0]);
    let untraced = per_iter_ns(200_000, || {
        black_box(black_box(&x) * black_box(&y));
    });
    let mut traced = 0.0;
    nb::vjp_many(
        |xs| {
            traced = per_iter_ns(200_000, || {
                black_box(&xs[0] * black_box(&y));
            });
            vec![xs[0].sum_all()]
        },
        std::slice::from_ref(&x),
    );
    let g = nb::grad(|x: &Tensor| (x.sin() * x + x.square()).sum_all());
    let tiny_grad = per_iter_ns(20_000, || {
        black_box(g(black_box(&x)));
    });
    let g_jit = nb::Jit::new(nb::grad(|x: &Tensor| (x.sin() * x + x.square()).sum_all()));
    let tiny_grad_jit = per_iter_ns(20_000, || {
        black_box(g_jit.call(black_box(&x)));
    });
    assert_eq!(
        g_jit.call(&x).to_vec::<f32>(),
        g(&x).to_vec::<f32>(),
        "jit replays the same values"
    );
    println!("{:<34} {:>12}", "case (f32[4], best of 5)", "ns per call");
    println!("{:<34} {:>12.0}", "mul, untraced", untraced);
    println!("{:<34} {:>12.0}", "mul, traced (inside vjp)", traced);
    println!("{:<34} {:>12.0}", "tiny_grad: grad(sum(sin(x)*x+x^2))", tiny_grad);
    println!("{:<34} {:>12.0}", "tiny_grad under jit (replayed)", tiny_grad_jit);
}
