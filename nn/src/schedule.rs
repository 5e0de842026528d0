//! Learning-rate schedules: constant, step decay, and cosine decay with linear warm-up.

/// A learning rate as a function of the step (0-based).
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    /// The same rate at every step.
    Constant(f64),
    /// `lr * gamma^(step / every)`.
    Step {
        /// Initial rate.
        lr: f64,
        /// Steps between decays.
        every: u64,
        /// Factor per decay.
        gamma: f64,
    },
    /// Linear warm-up from 0 to `lr` over `warmup` steps, then cosine decay to `min_lr` at
    /// `total` steps (and `min_lr` after).
    Cosine {
        /// Peak rate.
        lr: f64,
        /// Warm-up steps.
        warmup: u64,
        /// Total steps.
        total: u64,
        /// Final rate.
        min_lr: f64,
    },
}

impl Schedule {
    /// The rate at `step`.
    pub fn at(&self, step: u64) -> f64 {
        match *self {
            Schedule::Constant(lr) => lr,
            Schedule::Step { lr, every, gamma } => lr * gamma.powi((step / every.max(1)) as i32),
            Schedule::Cosine {
                lr,
                warmup,
                total,
                min_lr,
            } => {
                if step < warmup {
                    lr * (step + 1) as f64 / warmup as f64
                } else if step >= total {
                    min_lr
                } else {
                    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
                    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
                }
            }
        }
    }
}
