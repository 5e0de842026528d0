//! `backward` tells a leaf's `GradSyncHook` as soon as that leaf's gradient is final, not when
//! the sweep ends: the basis of overlapping a data-parallel all-reduce with the sweep.

use std::sync::{Arc, Mutex};

use nabla_core::{DType, GradSyncHook, Rng, Tensor};

#[derive(Default)]
struct Recorder {
    /// (node id of the ready leaf, how many of the watched leaves had a gradient then).
    ready: Mutex<Vec<(u64, usize)>>,
    reached: Mutex<Vec<u64>>,
    done: Mutex<usize>,
    watched: Mutex<Vec<Tensor>>,
}

impl GradSyncHook for Recorder {
    fn backward_begins(&self, reached: &[Tensor]) {
        *self.reached.lock().unwrap() = reached.iter().map(|t| t.node_id().unwrap()).collect();
    }
    fn grad_ready(&self, leaf: &Tensor) {
        assert!(leaf.grad().is_some(), "a ready leaf has its gradient");
        let with_grad = self
            .watched
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.grad().is_some())
            .count();
        self.ready.lock().unwrap().push((leaf.node_id().unwrap(), with_grad));
    }
    fn backward_done(&self) {
        *self.done.lock().unwrap() += 1;
    }
}

#[test]
fn leaves_are_reported_as_their_gradients_become_final_last_layer_first() {
    let mut rng = Rng::new(0);
    let hook = Arc::new(Recorder::default());
    let w: Vec<Tensor> = (0..4)
        .map(|_| {
            rng.normal(&[3, 3], 0.0, 1.0, DType::F64)
                .requires_grad_with_hook(hook.clone())
        })
        .collect();
    *hook.watched.lock().unwrap() = w.clone();
    let x = rng.normal(&[2, 3], 0.0, 1.0, DType::F64);
    // w[3] is never used.
    let out = x.matmul(&w[0]).tanh().matmul(&w[1]).tanh().matmul(&w[2]).sum_all();
    out.backward();
    let ids: Vec<u64> = w.iter().map(|t| t.node_id().unwrap()).collect();
    let ready = hook.ready.lock().unwrap().clone();
    assert_eq!(
        ready.iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]],
        "last layer first"
    );
    // When w2 was reported, only w2 had a gradient: the sweep had not reached w1 or w0.
    assert_eq!(ready.iter().map(|r| r.1).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(*hook.reached.lock().unwrap(), vec![ids[0], ids[1], ids[2]]);
    assert_eq!(*hook.done.lock().unwrap(), 1);
    assert!(w[3].grad().is_none());
    // Plain leaves without a hook still accumulate.
    let v = x.requires_grad();
    (&v * &v).sum_all().backward();
    assert_eq!(v.grad().unwrap().to_vec::<f64>(), (&x * 2.0).to_vec::<f64>());
}

#[test]
fn set_grad_replaces_and_checks_the_shape() {
    let w = Tensor::from_vec(vec![1.0f32, 2.0], &[2]).requires_grad();
    w.set_grad(Some(Tensor::from_vec(vec![3.0f32, 4.0], &[2])));
    assert_eq!(w.grad().unwrap().to_vec::<f32>(), vec![3.0, 4.0]);
    (&w * 1.0).sum_all().backward();
    assert_eq!(
        w.grad().unwrap().to_vec::<f32>(),
        vec![4.0, 5.0],
        "backward accumulates onto it"
    );
    w.set_grad(None);
    assert!(w.grad().is_none());
    let err = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        w.set_grad(Some(Tensor::from_vec(vec![1.0f32], &[1])))
    }))
    .unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(
        msg.contains("set_grad: gradient [1] (f32, cpu) does not match its leaf [2] (f32, cpu)"),
        "{msg}"
    );
}

#[test]
fn a_pullback_reports_primals_as_their_cotangents_become_final() {
    let mut rng = Rng::new(1);
    let w: Vec<Tensor> = (0..3).map(|_| rng.normal(&[3, 3], 0.0, 1.0, DType::F64)).collect();
    let x = rng.normal(&[2, 3], 0.0, 1.0, DType::F64);
    let (outs, pullback) = nabla_core::vjp_many(|p| vec![x.matmul(&p[0]).tanh().matmul(&p[1]).tanh().sum_all()], &w);
    let mut order = Vec::new();
    let grads = pullback.call_reporting(&[outs[0].ones_like()], &mut |i, g| order.push((i, g.to_vec::<f64>())));
    // p[2] is unused: not reported, zeros in the result. The others: last layer first, with
    // the final values.
    assert_eq!(order.iter().map(|o| o.0).collect::<Vec<_>>(), vec![1, 0]);
    assert_eq!(order[0].1, grads[1].to_vec::<f64>());
    assert_eq!(order[1].1, grads[0].to_vec::<f64>());
    assert!(grads[2].to_vec::<f64>().iter().all(|&v| v == 0.0));
}
