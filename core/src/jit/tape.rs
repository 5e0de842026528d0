//! A recorded program: the kernel calls one run of a function made, with where each argument
//! came from, replayed on new inputs without tracing, rules or graph bookkeeping.

use std::sync::Arc;

use smallvec::SmallVec;

use crate::backend::{
    AdamStep, ArgOp, Backend, BinaryOp, CmpOp, Padding2d, ReduceOp, RowOp, SgdStep, UnaryOp, Window2d,
};
use crate::dtype::DType;
use crate::layout::Layout;
use crate::storage::{RawTensor, Storage};

/// Where a value of the program comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ref {
    /// Input leaf `i` of the call.
    Input(usize),
    /// Constant `i`: a buffer that does not depend on the inputs (captured tensors, literals,
    /// and results of kernels whose arguments were all constants, folded at record time).
    Const(usize),
    /// The result of step `i`.
    Step(usize),
}

/// A host-side step that ops run on one tensor through the backend (reading index values to
/// check and wrap them, for example): replayed like a kernel.
pub(crate) type HostFn = Arc<dyn Fn(&dyn Backend, &RawTensor) -> RawTensor + Send + Sync>;

/// One kernel of the [`Backend`] trait with its non-tensor arguments, or a host step.
#[derive(Clone)]
pub(crate) enum Call {
    Unary(UnaryOp),
    Binary(BinaryOp),
    Compare(CmpOp),
    Select,
    Reduce(ReduceOp, Vec<usize>),
    ArgReduce(ArgOp, usize),
    Matmul,
    Rows(RowOp),
    LayerNorm(f64),
    LayerNormBackward(f64),
    RowsBackward(RowOp),
    ChannelMoments,
    ChannelScaleShift,
    ChannelNormBackward,
    BatchNormBackward,
    BatchNormSums,
    BatchNormInput,
    CrossEntropy,
    CrossEntropyBackward,
    Adam(AdamStep),
    /// Arguments `param, grad`, then the velocity when `velocity`.
    Sgd {
        step: SgdStep,
        velocity: bool,
    },
    /// Arguments `q, k, v` and, when `masked`, the mask.
    Attention {
        scale: f64,
        causal: bool,
        masked: bool,
    },
    /// Arguments `q, k, v`, the mask when `masked`, then the packed output and its cotangent.
    AttentionBackward {
        scale: f64,
        causal: bool,
        masked: bool,
    },
    Unfold(Window2d),
    Fold(Window2d),
    PoolArgmax(Window2d, Padding2d),
    PoolSum {
        window: Window2d,
        padding: Padding2d,
        scale: f64,
        transpose: bool,
    },
    Cast(DType),
    Contiguous,
    Gather,
    ScatterAdd,
    ScatterAddToZeros(usize),
    Concat(usize),
    Embed {
        shape: Vec<usize>,
        starts: Vec<usize>,
        steps: Vec<usize>,
    },
    RandomUniform(Vec<usize>, DType),
    Host(HostFn),
}

impl Call {
    /// Runs the kernel on `args` (as many as the kernel takes, in its order).
    pub(crate) fn run(&self, backend: &dyn Backend, args: &[RawTensor]) -> RawTensor {
        match self {
            Call::Unary(op) => backend.unary(*op, &args[0]),
            Call::Binary(op) => backend.binary(*op, &args[0], &args[1]),
            Call::Compare(op) => backend.compare(*op, &args[0], &args[1]),
            Call::Select => backend.select(&args[0], &args[1], &args[2]),
            Call::Reduce(op, axes) => backend.reduce(*op, &args[0], axes),
            Call::ArgReduce(op, axis) => backend.arg_reduce(*op, &args[0], *axis),
            Call::Matmul => backend.matmul(&args[0], &args[1]),
            Call::Rows(op) => backend.softmax_rows(*op, &args[0]),
            Call::LayerNorm(eps) => backend.layer_norm_rows(&args[0], *eps),
            Call::LayerNormBackward(eps) => backend.layer_norm_rows_backward(&args[0], &args[1], &args[2], *eps),
            Call::RowsBackward(op) => backend.softmax_rows_backward(*op, &args[0], &args[1]),
            Call::ChannelMoments => backend
                .channel_moments(&args[0])
                .expect("recorded channel moments replay on the backend that ran them"),
            Call::BatchNormBackward => backend
                .batch_norm_backward(&args[0], &args[1], &args[2], &args[3], &args[4])
                .expect("a recorded batch norm backward replays on the backend that ran it"),
            Call::ChannelScaleShift => backend
                .channel_scale_shift(&args[0], &args[1], &args[2], &args[3])
                .expect("a recorded channel scale and shift replays on the backend that ran it"),
            Call::BatchNormSums => backend
                .batch_norm_backward_sums(&args[0], &args[1], &args[2], &args[3])
                .expect("recorded batch norm sums replay on the backend that ran them"),
            Call::BatchNormInput => backend
                .batch_norm_backward_input(&args[0], &args[1], &args[2], &args[3], &args[4], &args[5])
                .expect("a recorded batch norm input gradient replays on the backend that ran it"),
            Call::ChannelNormBackward => backend
                .channel_norm_backward(&args[0], &args[1], &args[2])
                .expect("a recorded channel norm backward replays on the backend that ran it"),
            Call::CrossEntropy => backend.cross_entropy_rows(&args[0], &args[1]),
            Call::CrossEntropyBackward => backend.cross_entropy_rows_backward(&args[0], &args[1], &args[2]),
            Call::Adam(step) => backend.adam_update(&args[0], &args[1], &args[2], &args[3], &args[4], step),
            Call::Sgd { step, velocity } => backend
                .sgd_update(&args[0], &args[1], velocity.then(|| &args[2]), step)
                .expect("a recorded SGD update replays on the backend that ran it"),
            Call::Attention { scale, causal, masked } => backend
                .attention(&args[0], &args[1], &args[2], masked.then(|| &args[3]), *scale, *causal)
                .expect("a recorded fused attention replays on the backend that ran it"),
            Call::AttentionBackward { scale, causal, masked } => {
                let (mask, rest) = if *masked {
                    (Some(&args[3]), &args[4..])
                } else {
                    (None, &args[3..])
                };
                backend
                    .attention_backward(&args[0], &args[1], &args[2], mask, &rest[0], &rest[1], *scale, *causal)
                    .expect("a recorded fused attention backward replays on the backend that ran it")
            }
            Call::Unfold(window) => backend.unfold_windows(&args[0], window),
            Call::Fold(window) => backend.fold_windows(&args[0], window),
            Call::PoolArgmax(window, padding) => backend
                .pool_argmax(&args[0], window, padding)
                .expect("a recorded pooling choice replays on the backend that ran it"),
            Call::PoolSum {
                window,
                padding,
                scale,
                transpose,
            } => backend
                .pool_sum(&args[0], window, padding, *scale, *transpose)
                .expect("a recorded window sum replays on the backend that ran it"),
            Call::Cast(dtype) => backend.cast(&args[0], *dtype),
            Call::Contiguous => backend.contiguous(&args[0]),
            Call::Gather => backend.gather(&args[0], &args[1]),
            Call::ScatterAdd => backend.scatter_add(&args[0], &args[1], &args[2]),
            Call::ScatterAddToZeros(n) => backend.scatter_add_to_zeros(*n, &args[0], &args[1]),
            Call::Concat(axis) => {
                let refs: Vec<&RawTensor> = args.iter().collect();
                backend.concat(&refs, *axis)
            }
            Call::Embed { shape, starts, steps } => backend.embed(&args[0], shape, starts, steps),
            Call::RandomUniform(shape, dtype) => backend.random_uniform(&args[0], shape, *dtype),
            Call::Host(f) => f(backend, &args[0]),
        }
    }
}

/// One recorded kernel call.
pub(crate) struct Step {
    pub call: Call,
    /// The arguments: a value and the view of it the kernel read.
    pub args: SmallVec<[(Ref, Layout); 3]>,
    /// The backend that ran it.
    pub backend: Arc<dyn Backend>,
    /// Results of earlier steps read for the last time by this step (freed after it, so a
    /// replay holds no more memory than the eager run did).
    pub last_uses: SmallVec<[usize; 2]>,
}

/// A function's program for one input signature.
pub(crate) struct Tape {
    pub steps: Vec<Step>,
    pub consts: Vec<Storage>,
    /// The output leaves: a value and the view of it.
    pub outputs: Vec<(Ref, Layout)>,
}

impl Tape {
    /// Marks, for every step, the step results it reads for the last time (outputs are
    /// never freed).
    pub(crate) fn plan_frees(&mut self) {
        let mut last = vec![usize::MAX; self.steps.len()];
        for (i, step) in self.steps.iter().enumerate() {
            for (r, _) in &step.args {
                if let Ref::Step(s) = r {
                    last[*s] = i;
                }
            }
        }
        for (r, _) in &self.outputs {
            if let Ref::Step(s) = r {
                last[*s] = usize::MAX;
            }
        }
        for (s, &at) in last.iter().enumerate() {
            if at != usize::MAX {
                self.steps[at].last_uses.push(s);
            }
        }
    }

    /// Runs the program on the input leaves' storages; gives the output leaves' values.
    pub(crate) fn replay(&self, inputs: &[Storage]) -> Vec<RawTensor> {
        let mut values: Vec<Option<Storage>> = vec![None; self.steps.len()];
        let mut args: SmallVec<[RawTensor; 3]> = SmallVec::new();
        for (i, step) in self.steps.iter().enumerate() {
            args.clear();
            for (r, layout) in &step.args {
                args.push(RawTensor {
                    storage: self.resolve(*r, inputs, &values),
                    layout: layout.clone(),
                });
            }
            let out = step.call.run(step.backend.as_ref(), &args);
            values[i] = Some(out.storage);
            for &s in &step.last_uses {
                values[s] = None;
            }
        }
        self.outputs
            .iter()
            .map(|(r, layout)| RawTensor {
                storage: self.resolve(*r, inputs, &values),
                layout: layout.clone(),
            })
            .collect()
    }

    fn resolve(&self, r: Ref, inputs: &[Storage], values: &[Option<Storage>]) -> Storage {
        match r {
            Ref::Input(i) => inputs[i].clone(),
            Ref::Const(i) => self.consts[i].clone(),
            Ref::Step(i) => values[i]
                .clone()
                .expect("a step result is freed only after its last use"),
        }
    }
}
