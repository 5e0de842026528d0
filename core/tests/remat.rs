//! `checkpoint` (remat): the same values and derivatives as the plain function, in every
//! transform, and a lower peak of live memory during the backward pass of a deep MLP.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use nabla_core as nb;
use nb::{DType, Rng, Tensor};

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// The tests of this file take turns, so that one's allocations do not count in another's peak.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size());
        } else {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::SeqCst);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `f`'s result and the most bytes live at once while it ran, above what was live before.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let r = f();
    (r, PEAK.load(Ordering::SeqCst) - base)
}

fn layer(p: &(Tensor, Tensor), h: &Tensor) -> Tensor {
    (h.matmul(&p.0) + &p.1).tanh()
}

fn params(depth: usize, width: usize) -> Vec<(Tensor, Tensor)> {
    let mut rng = Rng::new(1);
    (0..depth)
        .map(|_| {
            (
                rng.normal(&[width, width], 0.0, 1.0 / (width as f64).sqrt(), DType::F32),
                rng.normal(&[width], 0.0, 0.1, DType::F32),
            )
        })
        .collect()
}

#[test]
fn checkpointed_blocks_lower_the_backward_peak_and_give_the_same_gradients() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (depth, width, batch) = (16, 256, 512);
    let ps = params(depth, width);
    let x = Rng::new(2).normal(&[batch, width], 0.0, 1.0, DType::F32);
    let plain = |ps: &Vec<(Tensor, Tensor)>| ps.iter().fold(x.clone(), |h, p| layer(p, &h)).square().mean_all();
    let block = nb::checkpoint(|a: &((Tensor, Tensor), Tensor)| layer(&a.0, &a.1));
    let remat = |ps: &Vec<(Tensor, Tensor)>| {
        ps.iter()
            .fold(x.clone(), |h, p| block(&(p.clone(), h)))
            .square()
            .mean_all()
    };
    let (g_plain, peak_plain) = peak_during(|| nb::grad(plain)(&ps));
    let (g_remat, peak_remat) = peak_during(|| nb::grad(remat)(&ps));
    for ((a, b), (c, d)) in g_plain.iter().zip(&g_remat) {
        assert_eq!(a.to_vec::<f32>(), c.to_vec::<f32>());
        assert_eq!(b.to_vec::<f32>(), d.to_vec::<f32>());
    }
    let activation = batch * width * 4;
    println!(
        "peak during grad of a {depth}-layer MLP: {:.1} MiB plain, {:.1} MiB with checkpointed layers ({} KiB per activation)",
        peak_plain as f64 / (1 << 20) as f64,
        peak_remat as f64 / (1 << 20) as f64,
        activation / 1024
    );
    assert!(
        (peak_remat as f64) < 0.6 * peak_plain as f64,
        "checkpointing saved too little: {peak_remat} bytes at peak vs {peak_plain}"
    );
}

#[test]
fn checkpoint_composes_with_second_order_forward_mode_vmap_and_jit() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let f = |x: &Tensor| (x.sin() * x.exp()).sum_all();
    let g = nb::checkpoint(f);
    let x = Tensor::from_vec(vec![0.3f64, -1.2, 0.7], &[3]);
    let v = Tensor::from_vec(vec![1.0f64, 0.5, -2.0], &[3]);
    let close = |a: &Tensor, b: &Tensor| (a - b).abs().max_all().item::<f64>() < 1e-14;
    assert!(close(&g(&x), &f(&x)));
    assert!(close(&nb::grad(&g)(&x), &nb::grad(f)(&x)));
    // grad of grad (a Hessian-vector product), forward mode, forward over reverse.
    let hvp = |h: &dyn Fn(&Tensor) -> Tensor| nb::grad(|y: &Tensor| (nb::grad(h)(y) * &v).sum_all())(&x);
    assert!(close(&hvp(&g), &hvp(&f)));
    assert!(close(&nb::jvp(&g, &x, &v).1, &nb::jvp(f, &x, &v).1));
    assert!(close(&nb::jvp(nb::grad(&g), &x, &v).1, &nb::jvp(nb::grad(f), &x, &v).1));
    // vmap over a batch of inputs, and a jitted gradient replayed.
    let xs = Tensor::from_vec(vec![0.1f64, 0.2, 0.3, -0.4, -0.5, -0.6], &[2, 3]);
    assert!(close(&nb::vmap(nb::grad(&g))(&xs), &nb::vmap(nb::grad(f))(&xs)));
    let jitted = nb::jit(nb::grad(&g));
    for _ in 0..2 {
        assert!(close(&jitted(&x), &nb::grad(f)(&x)));
    }
}
