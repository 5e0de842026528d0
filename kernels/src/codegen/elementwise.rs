//! Elementwise families: unary, binary, compare, select, cast, fill and the strided copy.

use super::{Gen, grid_stride, input_params, prelude};
use crate::dtype::KernelDType;
use crate::error::KernelError;
use crate::ops::{BinaryOp, CmpOp, UnaryOp};
use crate::params::{ArgType, Param};
use crate::spec::Variant;

const FLOATS: &str = "f32, f64, f16 or bf16";
const SIGNED: &str = "f32, f64, f16, bf16, i64 or i32";
const NUMBERS: &str = "f32, f64, f16, bf16, i64, i32 or u8";
const NUMBERS_OR_BOOL: &str = "f32, f64, f16, bf16, i64, i32, u8 or bool (or/and)";
const BOOL: &str = "bool";

fn unsupported(kernel: String, dtype: KernelDType, accepted: &'static str) -> KernelError {
    KernelError::Unsupported {
        kernel,
        dtype,
        accepted,
    }
}

/// The unsigned type integer arithmetic wraps in.
fn unsigned_of(d: KernelDType) -> &'static str {
    match d {
        KernelDType::I64 => "unsigned long long",
        _ => "unsigned int",
    }
}

/// An elementwise kernel's entry point: `out[i] = f(inputs at i)` over `n` elements, the output
/// contiguous, the inputs strided (`NbLayout` each) or, in the `_contig` variant, contiguous.
fn elementwise_body(variant: Variant, inputs: &[(&str, &str, KernelDType)], stmts: &str) -> String {
    let mut loop_body = String::new();
    for &(name, layout, d) in inputs {
        let index = match variant {
            Variant::Strided => format!("nb_offset({layout}, i)"),
            Variant::Contiguous => "i".to_string(),
        };
        loop_body.push_str(&format!("const {} {name}_v = {name}[{index}];\n", d.c_type()));
    }
    loop_body.push_str(stmts);
    grid_stride(&loop_body)
}

/// `f(x)` over the elements of one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnarySpec {
    op: UnaryOp,
    dtype: KernelDType,
    variant: Variant,
}

impl UnarySpec {
    /// The kernel of `op` on `dtype` (output of the same dtype): float functions on floats, `neg`,
    /// `abs`, `sign` and `relu` also on signed integers, `not` on bool.
    pub fn new(op: UnaryOp, dtype: KernelDType, variant: Variant) -> Result<UnarySpec, KernelError> {
        let accepted = match op {
            UnaryOp::Not => BOOL,
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Relu => SIGNED,
            _ => FLOATS,
        };
        let ok = match op {
            UnaryOp::Not => dtype == KernelDType::Bool,
            UnaryOp::Neg | UnaryOp::Abs | UnaryOp::Sign | UnaryOp::Relu => dtype.is_float() || dtype.is_signed_int(),
            _ => dtype.is_float(),
        };
        if !ok {
            return Err(unsupported(format!("unary {op}"), dtype, accepted));
        }
        Ok(UnarySpec { op, dtype, variant })
    }

    /// The operation.
    pub fn op(&self) -> UnaryOp {
        self.op
    }

    /// The input and output dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }

    /// Strided or contiguous operands.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The C expression of the result (compute type) from `c`, the input in the compute type.
    fn expr(&self) -> String {
        let d = self.dtype;
        if d.is_float() {
            let (zero, one) = (d.compute_literal(0), d.compute_literal(1));
            let f = |name: &str| format!("{}(c)", d.math(name));
            return match self.op {
                UnaryOp::Neg => "-c".into(),
                UnaryOp::Exp => f("exp"),
                UnaryOp::Log => f("log"),
                UnaryOp::Log1p => f("log1p"),
                UnaryOp::Sqrt => f("sqrt"),
                UnaryOp::Rsqrt => format!("{one} / {}", f("sqrt")),
                UnaryOp::Sin => f("sin"),
                UnaryOp::Cos => f("cos"),
                UnaryOp::Tanh => f("tanh"),
                UnaryOp::Sigmoid => {
                    let exp = d.math("exp");
                    format!("c >= {zero} ? {one} / ({one} + {exp}(-c)) : {exp}(c) / ({one} + {exp}(c))")
                }
                UnaryOp::Abs => f("fabs"),
                UnaryOp::Sign => format!("c > {zero} ? {one} : (c < {zero} ? -{one} : c)"),
                UnaryOp::Relu => format!("c > {zero} ? c : {zero}"),
                UnaryOp::Erf => f("erf"),
                UnaryOp::Floor => f("floor"),
                UnaryOp::Ceil => f("ceil"),
                // rint rounds ties to even in the default rounding mode.
                UnaryOp::Round => f("rint"),
                UnaryOp::Trunc => f("trunc"),
                UnaryOp::Gelu | UnaryOp::GeluDerivative | UnaryOp::GeluExact | UnaryOp::GeluExactDerivative => {
                    gelu_expr(self.op, d)
                }
                UnaryOp::Not => unreachable!("checked in new"),
            };
        }
        let (t, u) = (d.c_type(), unsigned_of(d));
        match self.op {
            UnaryOp::Neg => format!("({t})(({u})0 - ({u})c)"),
            UnaryOp::Abs => format!("c < 0 ? ({t})(({u})0 - ({u})c) : c"),
            UnaryOp::Sign => format!("({t})((c > 0) - (c < 0))"),
            UnaryOp::Relu => format!("c > 0 ? c : ({t})0"),
            UnaryOp::Not => "!c".into(),
            _ => unreachable!("checked in new"),
        }
    }
}

/// A double constant as a C literal of the compute type of `d` (Rust's shortest round-trip
/// form, so the same double as the CPU backend's).
fn constant(d: KernelDType, v: f64) -> String {
    format!("(({}){v:?})", d.compute_type())
}

/// GELU and its derivative in the compute type from `c`, with the formulas and constants of
/// the CPU backend (`nabla_core`'s `cpu/gelu.rs`).
fn gelu_expr(op: UnaryOp, d: KernelDType) -> String {
    let (half, one) = (constant(d, 0.5), d.compute_literal(1));
    let scale = constant(d, (2.0f64 / std::f64::consts::PI).sqrt());
    let (cubic, three_cubic) = (constant(d, 0.044715), constant(d, 3.0 * 0.044715));
    let r = constant(d, std::f64::consts::FRAC_1_SQRT_2);
    let density = constant(
        d,
        0.5 * std::f64::consts::FRAC_2_SQRT_PI * std::f64::consts::FRAC_1_SQRT_2,
    );
    let (tanh, erfc, exp) = (d.math("tanh"), d.math("erfc"), d.math("exp"));
    let t = format!("{tanh}({scale} * (c + {cubic} * c * c * c))");
    match op {
        UnaryOp::Gelu => format!("{half} * c * ({one} + {t})"),
        UnaryOp::GeluDerivative => format!(
            "[&]() {{ const auto t = {t}; return {half} * ({one} + t) + {half} * c * ({one} - t * t) * {scale} * ({one} + {three_cubic} * c * c); }}()"
        ),
        // x Phi(x) through erfc(-x / sqrt 2), as the CPU: 1 + erf(x / sqrt 2) cancels for
        // negative x.
        UnaryOp::GeluExact => format!("{half} * c * {erfc}(-c * {r})"),
        UnaryOp::GeluExactDerivative => {
            format!("{half} * {erfc}(-c * {r}) + c * {exp}(-({half} * c * c)) * {density}")
        }
        _ => unreachable!("GELU ops only"),
    }
}

impl Gen for UnarySpec {
    fn entry_name(&self) -> String {
        format!("nb_unary_{}_{}{}", self.op, self.dtype, self.variant.suffix())
    }

    fn params(&self) -> Vec<Param> {
        let strided = self.variant == Variant::Strided;
        let mut p = vec![Param::new("out", ArgType::Out(self.dtype))];
        p.extend(input_params(&[("x", "x_layout", self.dtype)], strided));
        p.push(Param::new("n", ArgType::I64));
        p
    }

    fn body(&self, _entry: &str) -> String {
        let d = self.dtype;
        let stmts = format!(
            "const {} c = {};\nout[i] = {};\n",
            d.compute_type(),
            d.to_compute("x_v"),
            d.from_compute(&format!("({})", self.expr()))
        );
        elementwise_body(self.variant, &[("x", "x_layout", d)], &stmts)
    }
}

/// `f(a, b)` over the elements of two operands of one shape and dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BinarySpec {
    op: BinaryOp,
    dtype: KernelDType,
    variant: Variant,
}

impl BinarySpec {
    /// The kernel of `op` on `dtype` (output of the same dtype): arithmetic on numbers, `and`,
    /// `or` and `xor` on bool, and, as the CPU backend, `add`/`maximum` (or) and `mul`/`minimum`
    /// (and) on bool.
    pub fn new(op: BinaryOp, dtype: KernelDType, variant: Variant) -> Result<BinarySpec, KernelError> {
        let (ok, accepted) = match op {
            BinaryOp::And | BinaryOp::Or | BinaryOp::Xor => (dtype == KernelDType::Bool, BOOL),
            BinaryOp::Add | BinaryOp::Mul | BinaryOp::Maximum | BinaryOp::Minimum => (true, NUMBERS_OR_BOOL),
            BinaryOp::Sub | BinaryOp::Div | BinaryOp::Pow => (dtype.is_number(), NUMBERS),
        };
        if !ok {
            return Err(unsupported(format!("binary {op}"), dtype, accepted));
        }
        Ok(BinarySpec { op, dtype, variant })
    }

    /// The operation.
    pub fn op(&self) -> BinaryOp {
        self.op
    }

    /// The operands' and output's dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }

    /// Strided or contiguous operands.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The C expression of the stored result from the stored operands `a_v` and `b_v` (and the
    /// compute-type copies `a`, `b` for floats).
    fn expr(&self) -> String {
        let d = self.dtype;
        if d == KernelDType::Bool {
            return match self.op {
                BinaryOp::And | BinaryOp::Mul | BinaryOp::Minimum => "a_v && b_v".into(),
                BinaryOp::Or | BinaryOp::Add | BinaryOp::Maximum => "a_v || b_v".into(),
                BinaryOp::Xor => "a_v != b_v".into(),
                _ => unreachable!("checked in new"),
            };
        }
        if d.is_float() {
            let e = match self.op {
                BinaryOp::Add => "a + b".to_string(),
                BinaryOp::Sub => "a - b".to_string(),
                BinaryOp::Mul => "a * b".to_string(),
                BinaryOp::Div => "a / b".to_string(),
                BinaryOp::Pow => format!("{}(a, b)", d.math("pow")),
                BinaryOp::Maximum => "(a != a || a >= b) ? a : b".to_string(),
                BinaryOp::Minimum => "(a != a || a <= b) ? a : b".to_string(),
                _ => unreachable!("checked in new"),
            };
            return d.from_compute(&format!("({e})"));
        }
        let (t, u, name) = (d.c_type(), unsigned_of(d), d.name());
        match self.op {
            BinaryOp::Add => format!("({t})(({u})a_v + ({u})b_v)"),
            BinaryOp::Sub => format!("({t})(({u})a_v - ({u})b_v)"),
            BinaryOp::Mul => format!("({t})(({u})a_v * ({u})b_v)"),
            BinaryOp::Div => format!("nb_floordiv_{name}(a_v, b_v, err)"),
            BinaryOp::Pow => format!("nb_ipow_{name}(a_v, b_v, err)"),
            BinaryOp::Maximum => "a_v >= b_v ? a_v : b_v".into(),
            BinaryOp::Minimum => "a_v <= b_v ? a_v : b_v".into(),
            _ => unreachable!("checked in new"),
        }
    }
}

impl Gen for BinarySpec {
    fn entry_name(&self) -> String {
        format!("nb_binary_{}_{}{}", self.op, self.dtype, self.variant.suffix())
    }

    /// Every binary kernel takes the error record last (only integer `div` and `pow` report), so
    /// that all of them launch alike.
    fn params(&self) -> Vec<Param> {
        let strided = self.variant == Variant::Strided;
        let d = self.dtype;
        let mut p = vec![Param::new("out", ArgType::Out(d))];
        p.extend(input_params(&[("a", "a_layout", d), ("b", "b_layout", d)], strided));
        p.push(Param::new("n", ArgType::I64));
        p.push(Param::new("err", ArgType::ErrorRecord));
        p
    }

    fn helpers(&self, _entry: &str) -> String {
        let d = self.dtype;
        if d.is_int() && matches!(self.op, BinaryOp::Div | BinaryOp::Pow) {
            prelude::int_helpers(d.name(), d.c_type(), unsigned_of(d), d.is_signed_int())
        } else {
            String::new()
        }
    }

    fn body(&self, _entry: &str) -> String {
        let d = self.dtype;
        let mut stmts = String::new();
        if d.is_float() {
            let c = d.compute_type();
            stmts.push_str(&format!("const {c} a = {};\n", d.to_compute("a_v")));
            stmts.push_str(&format!("const {c} b = {};\n", d.to_compute("b_v")));
        }
        stmts.push_str(&format!("out[i] = {};\n", self.expr()));
        elementwise_body(self.variant, &[("a", "a_layout", d), ("b", "b_layout", d)], &stmts)
    }
}

/// `a OP b` over the elements of two operands of one shape and dtype, giving bool.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CompareSpec {
    op: CmpOp,
    dtype: KernelDType,
    variant: Variant,
}

impl CompareSpec {
    /// The comparison `op` of two `dtype` operands (every dtype; floats compare as IEEE, so
    /// NaN is unequal to everything; `false < true`).
    pub fn new(op: CmpOp, dtype: KernelDType, variant: Variant) -> Result<CompareSpec, KernelError> {
        Ok(CompareSpec { op, dtype, variant })
    }

    /// The comparison.
    pub fn op(&self) -> CmpOp {
        self.op
    }

    /// The operands' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }

    /// Strided or contiguous operands.
    pub fn variant(&self) -> Variant {
        self.variant
    }
}

impl Gen for CompareSpec {
    fn entry_name(&self) -> String {
        format!("nb_cmp_{}_{}{}", self.op, self.dtype, self.variant.suffix())
    }

    fn params(&self) -> Vec<Param> {
        let d = self.dtype;
        let mut p = vec![Param::new("out", ArgType::Out(KernelDType::Bool))];
        p.extend(input_params(
            &[("a", "a_layout", d), ("b", "b_layout", d)],
            self.variant == Variant::Strided,
        ));
        p.push(Param::new("n", ArgType::I64));
        p
    }

    fn body(&self, _entry: &str) -> String {
        let d = self.dtype;
        let stmts = format!(
            "out[i] = {} {} {};\n",
            d.to_compute("a_v"),
            self.op.c_operator(),
            d.to_compute("b_v")
        );
        elementwise_body(self.variant, &[("a", "a_layout", d), ("b", "b_layout", d)], &stmts)
    }
}

/// `cond ? a : b` over the elements of three operands of one shape (`cond` bool).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SelectSpec {
    dtype: KernelDType,
    variant: Variant,
}

impl SelectSpec {
    /// The select of two `dtype` operands (every dtype).
    pub fn new(dtype: KernelDType, variant: Variant) -> Result<SelectSpec, KernelError> {
        Ok(SelectSpec { dtype, variant })
    }

    /// The dtype of `a`, `b` and the output.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }

    /// Strided or contiguous operands.
    pub fn variant(&self) -> Variant {
        self.variant
    }
}

impl Gen for SelectSpec {
    fn entry_name(&self) -> String {
        format!("nb_select_{}{}", self.dtype, self.variant.suffix())
    }

    fn params(&self) -> Vec<Param> {
        let d = self.dtype;
        let mut p = vec![Param::new("out", ArgType::Out(d))];
        p.extend(input_params(
            &[
                ("cond", "cond_layout", KernelDType::Bool),
                ("a", "a_layout", d),
                ("b", "b_layout", d),
            ],
            self.variant == Variant::Strided,
        ));
        p.push(Param::new("n", ArgType::I64));
        p
    }

    fn body(&self, _entry: &str) -> String {
        elementwise_body(
            self.variant,
            &[
                ("cond", "cond_layout", KernelDType::Bool),
                ("a", "a_layout", self.dtype),
                ("b", "b_layout", self.dtype),
            ],
            "out[i] = cond_v ? a_v : b_v;\n",
        )
    }
}

/// Conversion of every element from one dtype to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CastSpec {
    from: KernelDType,
    to: KernelDType,
    variant: Variant,
}

impl CastSpec {
    /// The conversion `from` -> `to` (every pair, the identity included), with the CPU
    /// backend's semantics (see [`KernelDType::cast_expr`]).
    pub fn new(from: KernelDType, to: KernelDType, variant: Variant) -> Result<CastSpec, KernelError> {
        Ok(CastSpec { from, to, variant })
    }

    /// The input dtype.
    pub fn from(&self) -> KernelDType {
        self.from
    }

    /// The output dtype.
    pub fn to(&self) -> KernelDType {
        self.to
    }

    /// Strided or contiguous input.
    pub fn variant(&self) -> Variant {
        self.variant
    }
}

impl Gen for CastSpec {
    fn entry_name(&self) -> String {
        format!("nb_cast_{}_{}{}", self.from, self.to, self.variant.suffix())
    }

    fn params(&self) -> Vec<Param> {
        let mut p = vec![Param::new("out", ArgType::Out(self.to))];
        p.extend(input_params(
            &[("x", "x_layout", self.from)],
            self.variant == Variant::Strided,
        ));
        p.push(Param::new("n", ArgType::I64));
        p
    }

    fn body(&self, _entry: &str) -> String {
        let stmts = format!("out[i] = {};\n", self.from.cast_expr(self.to, "x_v"));
        elementwise_body(self.variant, &[("x", "x_layout", self.from)], &stmts)
    }
}

/// A contiguous buffer filled with one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FillSpec {
    dtype: KernelDType,
}

impl FillSpec {
    /// The fill of a `dtype` buffer (every dtype); the value is passed as a `double` and
    /// converted as [`KernelDType::from_f64`] says.
    pub fn new(dtype: KernelDType) -> Result<FillSpec, KernelError> {
        Ok(FillSpec { dtype })
    }

    /// The buffer's dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for FillSpec {
    fn entry_name(&self) -> String {
        format!("nb_fill_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("out", ArgType::Out(self.dtype)),
            Param::new("n", ArgType::I64),
            Param::new("value", ArgType::F64),
        ]
    }

    fn body(&self, _entry: &str) -> String {
        let d = self.dtype;
        format!(
            "    const {} v = {};\n{}",
            d.c_type(),
            d.from_f64("value"),
            grid_stride("out[i] = v;\n")
        )
    }
}

/// `out[i] = start + i * step` for `i < n` (`arange`): computed in double with no fused
/// multiply-add, so that the value is the CPU's bit for bit, then converted to the dtype as
/// [`KernelDType::from_f64`] says (the CPU's cast from f64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ArangeSpec {
    dtype: KernelDType,
}

impl ArangeSpec {
    /// The ramp into a `dtype` buffer (every dtype but bool).
    pub fn new(dtype: KernelDType) -> Result<ArangeSpec, KernelError> {
        if dtype == KernelDType::Bool {
            return Err(KernelError::Unsupported {
                kernel: "arange".into(),
                dtype,
                accepted: "numbers (f32, f64, f16, bf16, i64, i32, u8)",
            });
        }
        Ok(ArangeSpec { dtype })
    }

    /// The buffer's dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for ArangeSpec {
    fn entry_name(&self) -> String {
        format!("nb_arange_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("out", ArgType::Out(self.dtype)),
            Param::new("n", ArgType::I64),
            Param::new("start", ArgType::F64),
            Param::new("step", ArgType::F64),
        ]
    }

    fn body(&self, _entry: &str) -> String {
        let value = self.dtype.from_f64("__dadd_rn(start, __dmul_rn((double)i, step))");
        grid_stride(&format!("out[i] = {value};\n"))
    }
}

/// A strided view copied into a contiguous buffer (`contiguous`, and the way to bring any view
/// into the layout the index kernels expect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CopySpec {
    dtype: KernelDType,
}

impl CopySpec {
    /// The strided-to-contiguous copy of `dtype` elements (every dtype).
    pub fn new(dtype: KernelDType) -> Result<CopySpec, KernelError> {
        Ok(CopySpec { dtype })
    }

    /// The elements' dtype.
    pub fn dtype(&self) -> KernelDType {
        self.dtype
    }
}

impl Gen for CopySpec {
    fn entry_name(&self) -> String {
        format!("nb_copy_{}", self.dtype)
    }

    fn params(&self) -> Vec<Param> {
        vec![
            Param::new("out", ArgType::Out(self.dtype)),
            Param::new("x", ArgType::In(self.dtype)),
            Param::new("x_layout", ArgType::Layout),
            Param::new("n", ArgType::I64),
        ]
    }

    fn body(&self, _entry: &str) -> String {
        grid_stride("out[i] = x[nb_offset(x_layout, i)];\n")
    }
}
