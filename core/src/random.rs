//! Seeded random tensors, reproducible across runs, thread counts and machines: every element
//! is a pure function of (seed, draw counter, element index), computed with integer hashing.

use crate::dtype::DType;
use crate::tensor::Tensor;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform double in `[0, 1)` for (key, index) (every backend's `random_uniform` computes
/// exactly this).
pub(crate) fn unit(key: u64, index: u64) -> f64 {
    (mix(key ^ mix(index.wrapping_mul(GOLDEN).wrapping_add(1))) >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// A random number generator with explicit, serialisable state: a seed and a draw counter.
/// Each call draws a fresh stream; the same seed and call sequence give the same tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rng {
    seed: u64,
    counter: u64,
}

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng { seed, counter: 0 }
    }

    /// The state `(seed, counter)`, for checkpoints.
    pub fn state(&self) -> (u64, u64) {
        (self.seed, self.counter)
    }

    /// A generator restored from [`Rng::state`].
    pub fn from_state(seed: u64, counter: u64) -> Rng {
        Rng { seed, counter }
    }

    fn next_key(&mut self) -> u64 {
        self.counter += 1;
        mix(self.seed.wrapping_mul(GOLDEN) ^ mix(self.counter))
    }

    /// Uniform samples in `[low, high)`.
    pub fn uniform(&mut self, shape: &[usize], low: f64, high: f64, dtype: DType) -> Tensor {
        if !dtype.is_float() {
            panic!("uniform: dtype must be a float (f32, f64, bf16 or f16), got {dtype}");
        }
        let key = self.next_key();
        let n = crate::shape::numel(shape);
        let v: Vec<f64> = (0..n as u64).map(|i| low + (high - low) * unit(key, i)).collect();
        note_random_draw(shape);
        Tensor::from_vec(v, shape).cast(dtype)
    }

    /// Standard normal samples (Box-Muller), times `std` plus `mean`.
    pub fn normal(&mut self, shape: &[usize], mean: f64, std: f64, dtype: DType) -> Tensor {
        if !dtype.is_float() {
            panic!("normal: dtype must be a float (f32, f64, bf16 or f16), got {dtype}");
        }
        let key = self.next_key();
        let n = crate::shape::numel(shape);
        let v: Vec<f64> = (0..n as u64)
            .map(|i| {
                let u1 = 1.0 - unit(key, 2 * i);
                let u2 = unit(key, 2 * i + 1);
                mean + std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
            })
            .collect();
        note_random_draw(shape);
        Tensor::from_vec(v, shape).cast(dtype)
    }

    /// A random permutation of `0..n` (i64), for shuffling.
    pub fn permutation(&mut self, n: usize) -> Tensor {
        let key = self.next_key();
        let mut idx: Vec<i64> = (0..n as i64).collect();
        for i in (1..n).rev() {
            let j = (unit(key, i as u64) * (i + 1) as f64) as usize;
            idx.swap(i, j.min(i));
        }
        note_random_draw(&[n]);
        Tensor::from_vec(idx, &[n])
    }
}

/// Tells a `jit` recording (if one runs on this thread) that the function draws random
/// numbers: a replay would repeat the same draw, so that signature runs eagerly instead.
fn note_random_draw(shape: &[usize]) {
    crate::jit::note_not_replayable(|| {
        format!(
            "the function draws random numbers (an Rng tensor of shape {shape:?}); a replay would \
             repeat the same draw, so draw them outside and pass them in as an argument"
        )
    });
}

/// A key for [`uniform`] and [`Tensor::dropout`] made from any integers, such as
/// `(seed, step, rank)`: an i64 scalar on the CPU (move it with `to_device`, or let the op
/// that uses it on a device copy it). Different parts give unrelated streams.
pub fn key(parts: &[u64]) -> Tensor {
    let k = parts
        .iter()
        .fold(mix(GOLDEN), |k, &p| mix(k ^ mix(p.wrapping_add(GOLDEN))));
    Tensor::from_vec(vec![k as i64], &[])
}

/// A new key from `key` and `data`, on the key's device without reading it (JAX's `fold_in`):
/// `key * 0x9E3779B97F4A7C15 + data` in wrapping 64-bit arithmetic, which the draws' hash
/// turns into an unrelated stream. Layers use it to give each of their dropouts its own key.
pub fn fold_in(key: &Tensor, data: u64) -> Tensor {
    if key.dtype() != DType::I64 || key.numel() != 1 {
        panic!(
            "random::fold_in: the key must be one i64 element made by random::key, got {} with shape {:?}",
            key.dtype(),
            key.shape()
        );
    }
    // Integer tensors, not Rust floats: a float scalar would round the 64-bit constants.
    let constant = |v: u64| Tensor::from_vec(vec![v as i64], &[]).on(key.device());
    key * constant(GOLDEN) + constant(data)
}

/// `shape` uniform samples in `[low, high)` of the float `dtype` from `key` (see [`key`]), on
/// `device`. A pure function of the key tensor, JAX style: the same key gives the same
/// numbers on every device, and under `jit` a key passed as an argument draws anew on every
/// replay (unlike [`Rng`], whose draws a replay would repeat).
pub fn uniform(key: &Tensor, shape: &[usize], low: f64, high: f64, dtype: DType, device: crate::Device) -> Tensor {
    if !dtype.is_float() {
        panic!("random::uniform: dtype must be a float (f32, f64, bf16 or f16), got {dtype}");
    }
    if key.dtype() != DType::I64 || key.numel() != 1 || key.is_batched() {
        panic!(
            "random::uniform: the key must be one i64 element made by random::key (not batched by vmap), got {} \
             with shape {:?}",
            key.dtype(),
            key.shape()
        );
    }
    let key = key.on(device);
    let raw = key.backend().random_uniform(key.raw(), shape, dtype);
    let u = Tensor::untraced(raw, &[&key]);
    if low == 0.0 && high == 1.0 {
        u
    } else {
        u * (high - low) + low
    }
}

impl Tensor {
    /// Inverted dropout: each element is zeroed with probability `rate` and the others scaled
    /// by `1 / (1 - rate)`, so the expectation is unchanged; the mask comes from `key` (see
    /// [`key`]; use a new key per step, e.g. `key(&[seed, step, rank])`). `rate = 0` is the
    /// identity. The gradient flows through the kept elements, scaled alike. Inside `vmap`, the
    /// mask is drawn per example shape, so every example gets the same mask.
    pub fn dropout(&self, rate: f64, key: &Tensor) -> Tensor {
        crate::ops::require_float("dropout", self);
        if !(0.0..1.0).contains(&rate) {
            panic!("dropout: rate must be in [0, 1), got {rate}");
        }
        if rate == 0.0 {
            return self.clone();
        }
        let u = uniform(key, self.shape(), 0.0, 1.0, self.dtype(), self.device());
        u.ge_scalar(rate)
            .where_(&(self * (1.0 / (1.0 - rate))), &self.scalar_like(0.0))
    }
}
