//! Elementwise launches: unary, binary, compare, select, cast, copy and fill. Every operand
//! contiguous gives the `_contig` variant (pointers advanced to the views' offsets, no index
//! arithmetic); otherwise each input passes its strided layout.

use nabla_core::DType;
use nabla_core::backend::{BinaryOp, CmpOp, UnaryOp};
use nabla_core::storage::RawTensor;
use nabla_kernels as k;
use nabla_kernels::{
    ArangeSpec, BinarySpec, CastSpec, CompareSpec, CopySpec, FillSpec, RandomUniformSpec, SelectSpec, UnarySpec,
    Variant, launch,
};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

fn unary_op(op: UnaryOp) -> k::UnaryOp {
    match op {
        UnaryOp::Neg => k::UnaryOp::Neg,
        UnaryOp::Exp => k::UnaryOp::Exp,
        UnaryOp::Log => k::UnaryOp::Log,
        UnaryOp::Log1p => k::UnaryOp::Log1p,
        UnaryOp::Sqrt => k::UnaryOp::Sqrt,
        UnaryOp::Rsqrt => k::UnaryOp::Rsqrt,
        UnaryOp::Sin => k::UnaryOp::Sin,
        UnaryOp::Cos => k::UnaryOp::Cos,
        UnaryOp::Tanh => k::UnaryOp::Tanh,
        UnaryOp::Sigmoid => k::UnaryOp::Sigmoid,
        UnaryOp::Abs => k::UnaryOp::Abs,
        UnaryOp::Sign => k::UnaryOp::Sign,
        UnaryOp::Relu => k::UnaryOp::Relu,
        UnaryOp::Not => k::UnaryOp::Not,
        UnaryOp::Erf => k::UnaryOp::Erf,
        UnaryOp::Gelu => k::UnaryOp::Gelu,
        UnaryOp::GeluDerivative => k::UnaryOp::GeluDerivative,
        UnaryOp::GeluExact => k::UnaryOp::GeluExact,
        UnaryOp::GeluExactDerivative => k::UnaryOp::GeluExactDerivative,
        UnaryOp::Floor => k::UnaryOp::Floor,
        UnaryOp::Ceil => k::UnaryOp::Ceil,
        UnaryOp::Round => k::UnaryOp::Round,
        UnaryOp::Trunc => k::UnaryOp::Trunc,
    }
}

fn binary_op(op: BinaryOp) -> k::BinaryOp {
    match op {
        BinaryOp::Add => k::BinaryOp::Add,
        BinaryOp::Sub => k::BinaryOp::Sub,
        BinaryOp::Mul => k::BinaryOp::Mul,
        BinaryOp::Div => k::BinaryOp::Div,
        BinaryOp::Pow => k::BinaryOp::Pow,
        BinaryOp::Maximum => k::BinaryOp::Maximum,
        BinaryOp::Minimum => k::BinaryOp::Minimum,
        BinaryOp::And => k::BinaryOp::And,
        BinaryOp::Or => k::BinaryOp::Or,
        BinaryOp::Xor => k::BinaryOp::Xor,
    }
}

fn cmp_op(op: CmpOp) -> k::CmpOp {
    match op {
        CmpOp::Eq => k::CmpOp::Eq,
        CmpOp::Ne => k::CmpOp::Ne,
        CmpOp::Lt => k::CmpOp::Lt,
        CmpOp::Le => k::CmpOp::Le,
        CmpOp::Gt => k::CmpOp::Gt,
        CmpOp::Ge => k::CmpOp::Ge,
    }
}

/// The variant for these inputs: contiguous when every one is.
fn variant(inputs: &[&RawTensor]) -> Variant {
    if inputs.iter().all(|x| x.layout().is_contiguous()) {
        Variant::Contiguous
    } else {
        Variant::Strided
    }
}

/// Launches an elementwise `spec` writing `out` from the named `inputs` (each with its
/// `{name}_layout` in the strided variant).
fn launch_map<A: DeviceApi>(
    be: &CudaBackend<A>,
    spec: &k::KernelSpec,
    v: Variant,
    out: &RawTensor,
    inputs: &[(&str, &RawTensor)],
) {
    let n = out.layout().numel() as i64;
    if n == 0 {
        return;
    }
    let layouts: Vec<Option<k::KernelLayout>> = inputs
        .iter()
        .map(|(_, x)| (v == Variant::Strided).then(|| CudaBackend::<A>::layout_of(x).expect("checked by fitting")))
        .collect();
    be.run(spec, launch::elementwise(n, be.api.sm_count()), |p| {
        if p.name == "out" {
            return Some(be.run_ptr(out));
        }
        if p.name == "n" {
            return Some(LaunchArg::I64(n));
        }
        for (k, (name, x)) in inputs.iter().enumerate() {
            if p.name == *name {
                return Some(match v {
                    Variant::Contiguous => be.run_ptr(x),
                    Variant::Strided => LaunchArg::Ptr(&be.buf(x).mem, 0),
                });
            }
            if p.name.strip_suffix("_layout") == Some(name) {
                return layouts[k].map(LaunchArg::Layout);
            }
        }
        None
    });
}

pub(super) fn unary<A: DeviceApi>(be: &CudaBackend<A>, op: UnaryOp, x: &RawTensor) -> RawTensor {
    let x = be.fitting(x);
    let v = variant(&[&x]);
    let s = spec(
        UnarySpec::new(unary_op(op), kernel_dtype(x.dtype()), v),
        &format!("{op:?}"),
    );
    let out = be.empty(x.shape(), x.dtype());
    launch_map(be, &s, v, &out, &[("x", &x)]);
    out
}

pub(super) fn binary<A: DeviceApi>(be: &CudaBackend<A>, op: BinaryOp, a: &RawTensor, b: &RawTensor) -> RawTensor {
    let (a, b) = (be.fitting(a), be.fitting(b));
    let v = variant(&[&a, &b]);
    let s = spec(
        BinarySpec::new(binary_op(op), kernel_dtype(a.dtype()), v),
        &format!("{op:?}"),
    );
    let out = be.empty(a.shape(), a.dtype());
    launch_map(be, &s, v, &out, &[("a", &a), ("b", &b)]);
    out
}

pub(super) fn compare<A: DeviceApi>(be: &CudaBackend<A>, op: CmpOp, a: &RawTensor, b: &RawTensor) -> RawTensor {
    let (a, b) = (be.fitting(a), be.fitting(b));
    let v = variant(&[&a, &b]);
    let s = spec(
        CompareSpec::new(cmp_op(op), kernel_dtype(a.dtype()), v),
        &format!("{op:?}"),
    );
    let out = be.empty(a.shape(), DType::Bool);
    launch_map(be, &s, v, &out, &[("a", &a), ("b", &b)]);
    out
}

pub(super) fn select<A: DeviceApi>(be: &CudaBackend<A>, cond: &RawTensor, a: &RawTensor, b: &RawTensor) -> RawTensor {
    let (c, a, b) = (be.fitting(cond), be.fitting(a), be.fitting(b));
    let v = variant(&[&c, &a, &b]);
    let s = spec(SelectSpec::new(kernel_dtype(a.dtype()), v), "where");
    let out = be.empty(a.shape(), a.dtype());
    launch_map(be, &s, v, &out, &[("cond", &c), ("a", &a), ("b", &b)]);
    out
}

pub(super) fn cast<A: DeviceApi>(be: &CudaBackend<A>, x: &RawTensor, dtype: DType) -> RawTensor {
    let x = be.fitting(x);
    let v = variant(&[&x]);
    let s = spec(CastSpec::new(kernel_dtype(x.dtype()), kernel_dtype(dtype), v), "cast");
    let out = be.empty(x.shape(), dtype);
    launch_map(be, &s, v, &out, &[("x", &x)]);
    out
}

/// A contiguous copy (the strided copy kernel; a contiguous input is one merged axis).
pub(super) fn copy<A: DeviceApi>(be: &CudaBackend<A>, x: &RawTensor) -> RawTensor {
    let x = be.fitting(x);
    let s = spec(CopySpec::new(kernel_dtype(x.dtype())), "contiguous");
    let out = be.empty(x.shape(), x.dtype());
    launch_map(be, &s, Variant::Strided, &out, &[("x", &x)]);
    out
}

pub(super) fn fill<A: DeviceApi>(be: &CudaBackend<A>, shape: &[usize], dtype: DType, value: f64) -> RawTensor {
    let s = spec(FillSpec::new(kernel_dtype(dtype)), "full");
    let out = be.empty(shape, dtype);
    let n = out.layout().numel() as i64;
    if n > 0 {
        be.run(&s, launch::elementwise(n, be.api.sm_count()), |p| match p.name {
            "out" => Some(be.run_ptr(&out)),
            "n" => Some(LaunchArg::I64(n)),
            "value" => Some(LaunchArg::F64(value)),
            _ => None,
        });
    }
    out
}

/// `start + i * step` for `i < n` in `dtype` (bool: made in f64 and cast, as the CPU does).
pub(super) fn arange<A: DeviceApi>(be: &CudaBackend<A>, n: usize, start: f64, step: f64, dtype: DType) -> RawTensor {
    if dtype == DType::Bool {
        return cast(be, &arange(be, n, start, step, DType::F64), DType::Bool);
    }
    let s = spec(ArangeSpec::new(kernel_dtype(dtype)), "arange");
    let out = be.empty(&[n], dtype);
    if n > 0 {
        be.run(&s, launch::elementwise(n as i64, be.api.sm_count()), |p| match p.name {
            "out" => Some(be.run_ptr(&out)),
            "n" => Some(LaunchArg::I64(n as i64)),
            "start" => Some(LaunchArg::F64(start)),
            "step" => Some(LaunchArg::F64(step)),
            _ => None,
        });
    }
    out
}

/// `shape` uniform samples of `dtype` from the key's first element (read on the device).
pub(super) fn random_uniform<A: DeviceApi>(
    be: &CudaBackend<A>,
    key: &RawTensor,
    shape: &[usize],
    dtype: DType,
) -> RawTensor {
    let s = spec(RandomUniformSpec::new(kernel_dtype(dtype)), "random::uniform");
    let out = be.empty(shape, dtype);
    let n = out.layout().numel() as i64;
    if n > 0 {
        be.run(&s, launch::elementwise(n, be.api.sm_count()), |p| match p.name {
            "out" => Some(be.run_ptr(&out)),
            "n" => Some(LaunchArg::I64(n)),
            "key" => Some(be.run_ptr(key)),
            _ => None,
        });
    }
    out
}
