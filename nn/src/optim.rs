//! Optimizers over any pytree: SGD (momentum, Nesterov, weight decay) and Adam / AdamW. The
//! optimizer state is a pytree too (`Tree`), so it can be flattened into a checkpoint and
//! passed through `jit`: Adam's step count is a tensor leaf of it, so a jitted training step
//! (gradient and update) replays with the current count. The learning rate is a Rust number:
//! a replay repeats the one the step was traced with (as a captured Python float in JAX).

use nabla_core::{AdamStep, DType, SgdStep, Tensor, Tree};

/// Stochastic gradient descent with optional momentum, Nesterov momentum and L2 weight decay
/// (PyTorch's conventions: `v = mu v + g`, step along `v` or `g + mu v`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgd {
    /// Momentum factor (0 disables the velocity buffer).
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 penalty added to the gradient (`g + wd * p`).
    pub weight_decay: f64,
}

/// Adam (Kingma & Ba 2015), or AdamW (Loshchilov & Hutter 2019) with `decoupled_weight_decay`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adam {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the root of the second moment.
    pub eps: f64,
    /// Weight decay: added to the gradient (Adam) or applied to the weights (AdamW).
    pub weight_decay: f64,
    /// AdamW: decay the weights directly instead of adding an L2 term to the gradient.
    pub decoupled_weight_decay: bool,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled_weight_decay: false,
        }
    }
}

/// An optimizer chosen at run time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Optimizer {
    /// SGD.
    Sgd(Sgd),
    /// Adam or AdamW.
    Adam(Adam),
}

/// The state of an [`Optimizer`] for parameters of type `P`.
#[derive(Clone, Debug)]
pub enum OptState<P> {
    /// SGD's velocity (absent without momentum).
    Sgd {
        /// Velocity per parameter.
        velocity: Option<P>,
    },
    /// Adam's moments and step count.
    Adam {
        /// First moments.
        m: P,
        /// Second moments.
        v: P,
        /// Updates applied so far (for bias correction): an i64 scalar on the parameters'
        /// device, a leaf of the state.
        count: Tensor,
    },
}

fn zip3(a: &[Tensor], b: &[Tensor], c: &[Tensor], name: &str) {
    if a.len() != b.len() || a.len() != c.len() {
        panic!(
            "{name}: parameters ({}), gradients ({}) and state ({}) have different numbers of leaves",
            a.len(),
            b.len(),
            c.len()
        );
    }
}

impl Optimizer {
    /// The initial state (zeros) for `params`.
    pub fn init<P: Tree>(&self, params: &P) -> OptState<P> {
        match self {
            Optimizer::Sgd(s) => OptState::Sgd {
                velocity: (s.momentum != 0.0).then(|| params.map_leaves(|t| t.zeros_like())),
            },
            Optimizer::Adam(_) => {
                let device = params.leaves().first().map_or(nabla_core::Device::Cpu, |t| t.device());
                OptState::Adam {
                    m: params.map_leaves(|t| t.zeros_like()),
                    v: params.map_leaves(|t| t.zeros_like()),
                    count: Tensor::full_on(&[], 0.0, DType::I64, device),
                }
            }
        }
    }

    /// One update with learning rate `lr`: the new parameters and state.
    pub fn update<P: Tree>(&self, params: &P, grads: &P, state: &OptState<P>, lr: f64) -> (P, OptState<P>) {
        let (p, g) = (params.leaves(), grads.leaves());
        match (self, state) {
            (Optimizer::Sgd(s), OptState::Sgd { velocity }) => {
                let step = SgdStep {
                    lr,
                    momentum: s.momentum,
                    nesterov: s.nesterov,
                    weight_decay: s.weight_decay,
                };
                // One fused kernel per parameter (the same formula in ops when traced).
                let v = velocity.as_ref().map(|vel| vel.leaves());
                zip3(&p, &g, v.as_deref().unwrap_or(&g), "sgd");
                let mut new_p = Vec::with_capacity(p.len());
                let mut new_v = Vec::with_capacity(p.len());
                for i in 0..p.len() {
                    let (q, v1) = nabla_core::sgd_update(&p[i], &g[i], v.as_ref().map(|v| &v[i]), &step);
                    new_p.push(q);
                    new_v.extend(v1);
                }
                let velocity = velocity.as_ref().map(|vel| vel.rebuild(new_v));
                (params.rebuild(new_p), OptState::Sgd { velocity })
            }
            (Optimizer::Adam(a), OptState::Adam { m, v, count }) => {
                let (ml, vl) = (m.leaves(), v.leaves());
                zip3(&p, &g, &ml, "adam");
                // On the state's device: one tiny kernel, recorded and replayed by jit.
                let t = count + &count.scalar_like(1.0);
                let step = AdamStep {
                    lr,
                    beta1: a.beta1,
                    beta2: a.beta2,
                    eps: a.eps,
                    weight_decay: a.weight_decay,
                    decoupled: a.decoupled_weight_decay,
                };
                let mut new_p = Vec::with_capacity(p.len());
                let mut new_m = Vec::with_capacity(p.len());
                let mut new_v = Vec::with_capacity(p.len());
                for i in 0..p.len() {
                    // One fused kernel per parameter (the same formula in ops when traced); the
                    // count goes to a parameter on another device (one element).
                    let t_here = if p[i].device() == t.device() {
                        t.clone()
                    } else {
                        t.to_device(p[i].device())
                            .unwrap_or_else(|e| panic!("adam: moving the step count: {e}"))
                    };
                    let (q, m1, v1) = nabla_core::adam_update(&p[i], &g[i], &ml[i], &vl[i], &t_here, &step);
                    new_p.push(q);
                    new_m.push(m1);
                    new_v.push(v1);
                }
                (
                    params.rebuild(new_p),
                    OptState::Adam {
                        m: m.rebuild(new_m),
                        v: v.rebuild(new_v),
                        count: t,
                    },
                )
            }
            _ => panic!("optimizer update: the state was created by a different optimizer"),
        }
    }
}

impl<P: Tree> OptState<P> {
    /// Updates applied so far (Adam; read from its device); 0 for SGD, whose update does not
    /// depend on it.
    pub fn count(&self) -> u64 {
        match self {
            OptState::Sgd { .. } => 0,
            OptState::Adam { count, .. } => count.item::<i64>() as u64,
        }
    }

    /// This state's structure filled with a checkpoint's optimizer leaves, at update count
    /// `step`: the leaves of [`Tree::leaves`], or those of checkpoints written before Adam's
    /// count became a leaf (the moments only; the count then comes from `step`). A number of
    /// leaves that fits neither is an error saying both numbers.
    pub fn restored(&self, leaves: Vec<Tensor>, step: u64) -> Result<Self, String> {
        let mut leaves = leaves;
        let want = self.leaves().len();
        if let OptState::Adam { count, .. } = self
            && leaves.len() + 1 == want
        {
            leaves.push(count.clone());
        }
        if leaves.len() != want {
            return Err(format!(
                "the checkpoint holds {} optimizer tensors, this optimizer's state needs {want}",
                leaves.len()
            ));
        }
        Ok(self.rebuild(leaves).with_count(step))
    }

    /// The same state with its update count set (when restoring a checkpoint), on the
    /// count's device.
    pub fn with_count(self, n: u64) -> Self {
        match self {
            OptState::Adam { m, v, count } => {
                let count = Tensor::full_on(&[], n as f64, DType::I64, count.device());
                OptState::Adam { m, v, count }
            }
            s => s,
        }
    }
}

impl<P: Tree> Tree for OptState<P> {
    fn flatten_into(&self, leaves: &mut Vec<Tensor>) {
        match self {
            OptState::Sgd { velocity } => velocity.flatten_into(leaves),
            OptState::Adam { m, v, count } => {
                m.flatten_into(leaves);
                v.flatten_into(leaves);
                leaves.push(count.clone());
            }
        }
    }
    fn unflatten_from(&self, leaves: &mut dyn Iterator<Item = Tensor>) -> Self {
        match self {
            OptState::Sgd { velocity } => OptState::Sgd {
                velocity: velocity.unflatten_from(leaves),
            },
            OptState::Adam { m, v, count } => OptState::Adam {
                m: m.unflatten_from(leaves),
                v: v.unflatten_from(leaves),
                count: count.unflatten_from(leaves),
            },
        }
    }
}
