//! Layers as plain pytrees: `Linear` and a configurable `Mlp`. A model is its parameters; the
//! forward pass is a method, and `nabla::grad` of a loss of the model gives a model-shaped
//! gradient.

use nabla_core::{DType, Rng, Tensor, Tree};
use nabla_derive::Tree;

use crate::init::Init;

/// Elementwise activation functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `x`
    Identity,
    /// `max(x, 0)`
    Relu,
    /// `tanh(x)`
    Tanh,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// GELU (tanh approximation)
    Gelu,
    /// `x * sigmoid(x)`
    Silu,
}

impl Activation {
    /// Applies the activation.
    pub fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::Identity => x.clone(),
            Activation::Relu => x.relu(),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Gelu => x.gelu(),
            Activation::Silu => x.silu(),
        }
    }

    /// The initialiser that suits a layer followed by this activation (He for ReLU-like,
    /// Glorot otherwise).
    pub fn default_init(self) -> Init {
        match self {
            Activation::Relu | Activation::Gelu | Activation::Silu => Init::HeNormal,
            _ => Init::GlorotUniform,
        }
    }
}

/// An affine layer `x @ w + b` with `w: [in, out]`, `b: [out]`.
#[derive(Clone, Debug, Tree)]
pub struct Linear {
    /// Weights, `[in, out]`.
    pub w: Tensor,
    /// Bias, `[out]`.
    pub b: Tensor,
}

impl Linear {
    /// A layer with weights drawn by `init` and zero bias.
    pub fn new(inputs: usize, outputs: usize, init: Init, rng: &mut Rng, dtype: DType) -> Linear {
        Linear {
            w: init.sample(rng, &[inputs, outputs], dtype),
            b: Tensor::zeros(&[outputs], dtype),
        }
    }

    /// `x @ w + b` for `x: [batch, in]` (or `[in]`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.w) + &self.b
    }
}

/// A multi-layer perceptron: `Linear` layers with an activation after every layer but the last
/// (which gives logits).
#[derive(Clone, Debug, Tree)]
pub struct Mlp {
    /// The layers, input first.
    pub layers: Vec<Linear>,
    /// One activation per hidden layer (`layers.len() - 1` of them).
    #[tree(skip)]
    pub activations: Vec<Activation>,
}

impl Mlp {
    /// An MLP with layer widths `widths` (input first, output last) and the activations of the
    /// hidden layers (one fewer than the layers; a single entry is used for every hidden layer).
    pub fn new(widths: &[usize], activations: &[Activation], rng: &mut Rng, dtype: DType) -> Mlp {
        if widths.len() < 2 {
            panic!("Mlp::new: needs at least an input and an output width, got {widths:?}");
        }
        let hidden = widths.len() - 2;
        let acts: Vec<Activation> = match activations.len() {
            1 => vec![activations[0]; hidden],
            n if n == hidden => activations.to_vec(),
            n => panic!(
                "Mlp::new: {n} activations for {hidden} hidden layers (widths {widths:?}); pass one per hidden layer or one for all"
            ),
        };
        let layers = (0..widths.len() - 1)
            .map(|i| {
                let init = acts.get(i).map_or(Init::GlorotUniform, |a| a.default_init());
                Linear::new(widths[i], widths[i + 1], init, rng, dtype)
            })
            .collect();
        Mlp {
            layers,
            activations: acts,
        }
    }

    /// The logits for inputs `x: [batch, widths[0]]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(&h);
            if let Some(act) = self.activations.get(i) {
                h = act.apply(&h);
            }
        }
        h
    }

    /// Number of scalar parameters.
    pub fn parameter_count(&self) -> usize {
        self.leaves().iter().map(|t| t.numel()).sum()
    }
}
