//! The operations of the kernel families. They mirror `nabla_core::backend`'s enums (this crate
//! has no dependencies, so the CUDA backend maps one onto the other with a plain `match`).

macro_rules! op_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vdoc:meta])* $v:ident => $s:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $v,)*
        }

        impl $name {
            /// Every operation of this kind, in catalogue order.
            pub const ALL: &'static [$name] = &[$($name::$v),*];

            /// The lower-case name used in entry points.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$v => $s,)*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

op_enum! {
    /// Elementwise functions of one operand.
    UnaryOp {
        /// `-x` (floats, signed integers; integers wrap)
        Neg => "neg",
        /// `e^x` (floats)
        Exp => "exp",
        /// natural logarithm (floats)
        Log => "log",
        /// `log(1 + x)` (floats)
        Log1p => "log1p",
        /// square root (floats)
        Sqrt => "sqrt",
        /// `1 / sqrt(x)` (floats)
        Rsqrt => "rsqrt",
        /// sine (floats)
        Sin => "sin",
        /// cosine (floats)
        Cos => "cos",
        /// hyperbolic tangent (floats)
        Tanh => "tanh",
        /// `1 / (1 + e^-x)`, without overflow (floats)
        Sigmoid => "sigmoid",
        /// absolute value (floats, signed integers; integers wrap)
        Abs => "abs",
        /// -1, 0 or 1; keeps the sign of zero and NaN (floats, signed integers)
        Sign => "sign",
        /// `max(x, 0)`; NaN gives 0 as on the CPU (floats, signed integers)
        Relu => "relu",
        /// logical not (bool)
        Not => "not",
        /// the error function (floats)
        Erf => "erf",
        /// round down to an integer (floats)
        Floor => "floor",
        /// round up to an integer (floats)
        Ceil => "ceil",
        /// round to the nearest integer, ties to even (floats)
        Round => "round",
        /// round toward zero (floats)
        Trunc => "trunc",
        /// GELU, tanh approximation (floats)
        Gelu => "gelu",
        /// the derivative of the tanh-approximated GELU (floats)
        GeluDerivative => "gelu_derivative",
        /// GELU through erf (floats)
        GeluExact => "gelu_exact",
        /// the derivative of the exact GELU (floats)
        GeluExactDerivative => "gelu_exact_derivative",
    }
}

op_enum! {
    /// Elementwise functions of two operands of one dtype.
    BinaryOp {
        /// `a + b` (numbers, integers wrap; bool: or, as the CPU backend)
        Add => "add",
        /// `a - b` (numbers, integers wrap)
        Sub => "sub",
        /// `a * b` (numbers, integers wrap; bool: and)
        Mul => "mul",
        /// `a / b`: IEEE for floats, floor division for integers (division by zero is a device
        /// error)
        Div => "div",
        /// `a ^ b`: `pow` for floats, wrapping repeated product for integers (a negative
        /// exponent is a device error)
        Pow => "pow",
        /// larger of the two; NaN in `a` or `b` propagates (numbers; bool: or)
        Maximum => "maximum",
        /// smaller of the two; NaN in `a` or `b` propagates (numbers; bool: and)
        Minimum => "minimum",
        /// logical and (bool)
        And => "and",
        /// logical or (bool)
        Or => "or",
        /// logical exclusive or (bool)
        Xor => "xor",
    }
}

op_enum! {
    /// Elementwise comparisons of two operands of one dtype; the result is bool.
    CmpOp {
        /// `a == b`
        Eq => "eq",
        /// `a != b`
        Ne => "ne",
        /// `a < b`
        Lt => "lt",
        /// `a <= b`
        Le => "le",
        /// `a > b`
        Gt => "gt",
        /// `a >= b`
        Ge => "ge",
    }
}

op_enum! {
    /// Reductions over any set of axes.
    ReduceOp {
        /// sum (bool: or)
        Sum => "sum",
        /// product (bool: and)
        Prod => "prod",
        /// maximum; NaN propagates (bool: or)
        Max => "max",
        /// minimum; NaN propagates (bool: and)
        Min => "min",
    }
}

op_enum! {
    /// Index-of-extremum reductions along one axis; the result is i64.
    ArgOp {
        /// index of the first maximum
        ArgMax => "argmax",
        /// index of the first minimum
        ArgMin => "argmin",
    }
}

op_enum! {
    /// The fused row kernels along the last axis.
    RowOp {
        /// `softmax(x)` of every row
        Softmax => "softmax",
        /// `log_softmax(x)` of every row
        LogSoftmax => "log_softmax",
        /// softmax of the entries `j <= i` of every row, `i` the row's index modulo `lq` (its
        /// query), 0 for the others: causal attention's softmax (takes an `lq` argument)
        CausalSoftmax => "causal_softmax",
        /// `(x - mean) / sqrt(var + eps)` of every row (takes an `eps` argument)
        LayerNorm => "layer_norm",
        /// `rstd (v - mean(v) - y mean(v y))` of every row, `rstd` from `x` as `LayerNorm` forms
        /// it (the layer norm's Jacobian product; takes `y`, `v` and `eps` arguments)
        LayerNormBackward => "layer_norm_backward",
        /// `x (v - sum(x v))` of every row, `x` the softmax's output (its Jacobian product,
        /// symmetric, so the VJP and the JVP; takes a `v` argument)
        SoftmaxBackward => "softmax_backward",
        /// `v - exp(x) sum(v)` of every row, `x` the log-softmax's output (its VJP; takes a
        /// `v` argument)
        LogSoftmaxBackward => "log_softmax_backward",
    }
}

op_enum! {
    /// Batch normalisation's fused kernels over a contiguous `[A, C, B]` (`C` the channels), in
    /// passes ([`crate::ChannelPass`]).
    ChannelOp {
        /// the mean and biased variance of every channel over its `A * B` values, as `[2, C]`
        Moments => "moments",
        /// `rstd (v - mean(v) - y mean(v y))` per channel: the per-channel standardisation's
        /// Jacobian product from its output `y`, `v` and the channels' `rstd`
        NormBackward => "norm_backward",
        /// batch normalisation's backward pass from `x`, the cotangent `g`, the channels'
        /// `mean`, `rstd` and `gamma`: `dx`, then `dgamma`, then `dbeta`, packed
        BatchNormBackward => "batch_norm_backward",
        /// `(x - mean) scale + shift` per channel (batch norm's output; an apply pass only)
        ScaleShift => "scale_shift",
    }
}

impl CmpOp {
    /// The C operator.
    pub(crate) fn c_operator(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}
