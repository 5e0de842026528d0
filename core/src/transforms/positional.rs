//! The positional API for functions of several tensor arguments, with `argnums` and the other
//! options of Nabla's `grad` family, so that seed code ports line by line. `holomorphic`,
//! `reduce_axes` and `mode` are accepted and ignored, as Nabla documents.

use super::api::require_float_leaves;
use super::jacobian::{JacobianEngine, jacfwd_leaves, jacrev_leaves};
use super::vjp::{require_scalar, vjp_many};
use crate::tensor::Tensor;
use crate::tree::Tree;

/// Which positional arguments to differentiate: one index, or several.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Argnums {
    /// One argument (JAX `argnums=i`).
    One(usize),
    /// Several arguments, in this order (JAX `argnums=(i, j, ...)`).
    Many(Vec<usize>),
    /// Every argument (Nabla's `argnums=None` for `jacfwd`).
    All,
}

impl Argnums {
    /// The indices, checked against the number of arguments.
    pub fn resolve(&self, op: &str, nargs: usize) -> Vec<usize> {
        let list = match self {
            Argnums::One(i) => vec![*i],
            Argnums::Many(v) => v.clone(),
            Argnums::All => (0..nargs).collect(),
        };
        if let Some(&bad) = list.iter().find(|&&i| i >= nargs) {
            panic!(
                "{op}: argnums {self:?} refers to argument {bad}, but the function was called with {nargs} argument(s)"
            );
        }
        if list.is_empty() {
            panic!("{op}: argnums is empty; name at least one argument");
        }
        list
    }
}

impl Default for Argnums {
    fn default() -> Self {
        Argnums::One(0)
    }
}
impl From<usize> for Argnums {
    fn from(i: usize) -> Self {
        Argnums::One(i)
    }
}
impl<const N: usize> From<[usize; N]> for Argnums {
    fn from(v: [usize; N]) -> Self {
        Argnums::Many(v.to_vec())
    }
}
impl From<Vec<usize>> for Argnums {
    fn from(v: Vec<usize>) -> Self {
        Argnums::Many(v)
    }
}

impl From<Argnums> for GradOptions {
    fn from(argnums: Argnums) -> Self {
        GradOptions {
            argnums,
            ..Default::default()
        }
    }
}
impl From<usize> for GradOptions {
    fn from(i: usize) -> Self {
        Argnums::One(i).into()
    }
}
impl<const N: usize> From<[usize; N]> for GradOptions {
    fn from(v: [usize; N]) -> Self {
        Argnums::Many(v.to_vec()).into()
    }
}
impl From<Vec<usize>> for GradOptions {
    fn from(v: Vec<usize>) -> Self {
        Argnums::Many(v).into()
    }
}

/// Options of the `grad` family (Nabla's keyword arguments).
#[derive(Clone, Debug, Default)]
pub struct GradOptions {
    /// Which arguments to differentiate (default: the first).
    pub argnums: Argnums,
    /// Accepted and ignored (complex numbers are not supported).
    pub holomorphic: bool,
    /// Integer arguments named in `argnums` get zero gradients instead of an error.
    pub allow_int: bool,
    /// Accepted and ignored.
    pub reduce_axes: Vec<isize>,
    /// Accepted and ignored (`"reverse"` is always used for gradients).
    pub mode: Option<String>,
}

/// Gradients of `f(args)` with respect to `wrt` (float leaves) plus zeros for allowed ints.
fn gradients<X: Tree>(
    op: &str,
    f: &dyn Fn(&[Tensor]) -> (Tensor, X),
    args: &[Tensor],
    opts: &GradOptions,
) -> ((Tensor, X), Vec<Tensor>) {
    let wrt = opts.argnums.resolve(op, args.len());
    let chosen: Vec<Tensor> = wrt.iter().map(|&i| args[i].clone()).collect();
    require_float_leaves(op, &chosen, opts.allow_int);
    let float_wrt: Vec<usize> = wrt.iter().copied().filter(|&i| args[i].dtype().is_float()).collect();
    let mut aux = None;
    let (outs, pullback) = vjp_many(
        |xs| {
            let mut all = args.to_vec();
            for (k, &i) in float_wrt.iter().enumerate() {
                all[i] = xs[k].clone();
            }
            let (v, a) = f(&all);
            aux = Some(a);
            vec![v]
        },
        &float_wrt.iter().map(|&i| args[i].clone()).collect::<Vec<_>>(),
    );
    require_scalar(op, &outs[0]);
    let gs = pullback.call(&[outs[0].ones_like()]);
    let grads = wrt
        .iter()
        .map(|&i| match float_wrt.iter().position(|&j| j == i) {
            Some(k) => gs[k].clone(),
            None => args[i].zeros_like(),
        })
        .collect();
    let aux = aux.expect("the function ran").map_leaves(super::release_finished);
    ((outs[0].clone(), aux), grads)
}

/// `grad` of `f(args...)` with options: one gradient per entry of `argnums`, in order.
pub fn grad_with(f: impl Fn(&[Tensor]) -> Tensor, opts: impl Into<GradOptions>) -> impl Fn(&[Tensor]) -> Vec<Tensor> {
    let opts = opts.into();
    move |args: &[Tensor]| gradients("grad", &|xs: &[Tensor]| (f(xs), ()), args, &opts).1
}

/// `value_and_grad` of `f(args...)` with options: `(value, gradients)`.
pub fn value_and_grad_with(
    f: impl Fn(&[Tensor]) -> Tensor,
    opts: impl Into<GradOptions>,
) -> impl Fn(&[Tensor]) -> (Tensor, Vec<Tensor>) {
    let opts = opts.into();
    move |args: &[Tensor]| {
        let ((v, ()), g) = gradients("value_and_grad", &|xs: &[Tensor]| (f(xs), ()), args, &opts);
        (v, g)
    }
}

/// `grad` with `has_aux`: `f` returns `(value, aux)`; gives `(gradients, aux)`.
pub fn grad_with_aux_with<X: Tree>(
    f: impl Fn(&[Tensor]) -> (Tensor, X),
    opts: impl Into<GradOptions>,
) -> impl Fn(&[Tensor]) -> (Vec<Tensor>, X) {
    let opts = opts.into();
    move |args: &[Tensor]| {
        let ((_, aux), g) = gradients("grad", &f, args, &opts);
        (g, aux)
    }
}

/// `value_and_grad` with `has_aux`: gives `((value, aux), gradients)`.
pub fn value_and_grad_with_aux_with<X: Tree>(
    f: impl Fn(&[Tensor]) -> (Tensor, X),
    opts: impl Into<GradOptions>,
) -> impl Fn(&[Tensor]) -> ((Tensor, X), Vec<Tensor>) {
    let opts = opts.into();
    move |args: &[Tensor]| gradients("value_and_grad", &f, args, &opts)
}

/// Jacobian blocks `[output][argument]` for the arguments `opts.argnums` names: float
/// arguments through `engine`, integer ones (with `allow_int`) as zeros of shape
/// `out.shape ++ arg.shape`.
fn jacobians(
    op: &str,
    f: &dyn Fn(&[Tensor]) -> Vec<Tensor>,
    args: &[Tensor],
    opts: &GradOptions,
    engine: JacobianEngine<()>,
) -> Vec<Vec<Tensor>> {
    let wrt = opts.argnums.resolve(op, args.len());
    let chosen: Vec<Tensor> = wrt.iter().map(|&i| args[i].clone()).collect();
    require_float_leaves(op, &chosen, opts.allow_int);
    let float_wrt: Vec<usize> = wrt.iter().copied().filter(|&i| args[i].dtype().is_float()).collect();
    let blocks = if float_wrt.is_empty() {
        vec![]
    } else {
        engine(&|xs: &[Tensor]| (f(xs), ()), args, &float_wrt).0
    };
    let out_shapes: Vec<Vec<usize>> = if blocks.is_empty() || float_wrt.len() < wrt.len() {
        f(args).iter().map(|o| o.shape().to_vec()).collect()
    } else {
        vec![]
    };
    let n_out = if blocks.is_empty() {
        out_shapes.len()
    } else {
        blocks.len()
    };
    (0..n_out)
        .map(|j| {
            wrt.iter()
                .map(|&i| match float_wrt.iter().position(|&k| k == i) {
                    Some(k) => blocks[j][k].clone(),
                    None => {
                        let mut shape = out_shapes[j].clone();
                        shape.extend_from_slice(args[i].shape());
                        Tensor::full_on(&shape, 0.0, crate::DType::F32, args[i].device())
                    }
                })
                .collect()
        })
        .collect()
}

/// Forward-mode Jacobians of `f(args...)` for each argument that `opts` names (argnums alone
/// converts into options; `Argnums::All` is Nabla's `argnums=None`), each of shape
/// `out.shape ++ arg.shape`.
pub fn jacfwd_with(f: impl Fn(&[Tensor]) -> Tensor, opts: impl Into<GradOptions>) -> impl Fn(&[Tensor]) -> Vec<Tensor> {
    let j = jacfwd_many_with(move |xs: &[Tensor]| vec![f(xs)], opts);
    move |args: &[Tensor]| j(args).swap_remove(0)
}

/// Reverse-mode Jacobians of `f(args...)` for each argument that `opts` names.
pub fn jacrev_with(f: impl Fn(&[Tensor]) -> Tensor, opts: impl Into<GradOptions>) -> impl Fn(&[Tensor]) -> Vec<Tensor> {
    let j = jacrev_many_with(move |xs: &[Tensor]| vec![f(xs)], opts);
    move |args: &[Tensor]| j(args).swap_remove(0)
}

/// Forward-mode Jacobians of a function with several outputs: `result[j][k]` is
/// `d outs[j] / d args[argnums[k]]`, of shape `outs[j].shape ++ arg.shape`. The function is
/// traced once. With [`jacrev_with`] inside, all second derivatives in one line, as JAX's
/// `jacfwd(jacrev(f, argnums=(0, 1)), argnums=(0, 1))`:
/// `jacfwd_many_with(jacrev_with(f, [0, 1]), [0, 1])(&args)[i][j]` is `d^2 f / d args[i] d args[j]`.
pub fn jacfwd_many_with(
    f: impl Fn(&[Tensor]) -> Vec<Tensor>,
    opts: impl Into<GradOptions>,
) -> impl Fn(&[Tensor]) -> Vec<Vec<Tensor>> {
    let opts = opts.into();
    move |args: &[Tensor]| jacobians("jacfwd", &f, args, &opts, jacfwd_leaves::<()>)
}

/// Reverse-mode Jacobians of a function with several outputs (see [`jacfwd_many_with`]).
pub fn jacrev_many_with(
    f: impl Fn(&[Tensor]) -> Vec<Tensor>,
    opts: impl Into<GradOptions>,
) -> impl Fn(&[Tensor]) -> Vec<Vec<Tensor>> {
    let opts = opts.into();
    move |args: &[Tensor]| jacobians("jacrev", &f, args, &opts, jacrev_leaves::<()>)
}

/// The Hessian blocks of a scalar-valued `f(args...)` for the arguments `opts` names:
/// `result[i][j]` is `d^2 f / d args[argnums[i]] d args[argnums[j]]` (Nabla's and JAX's
/// `hessian(f, argnums)`).
pub fn hessian_with(
    f: impl Fn(&[Tensor]) -> Tensor,
    opts: impl Into<GradOptions>,
) -> impl Fn(&[Tensor]) -> Vec<Vec<Tensor>> {
    let opts: GradOptions = opts.into();
    jacfwd_many_with(jacrev_with(f, opts.clone()), opts)
}
