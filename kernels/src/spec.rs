//! [`KernelSpec`]: one entry point of any family, and the [`catalogue`] of all of them.

use crate::codegen::attention::{AttentionPass, AttentionSpec, HEAD_CLASSES as ATTENTION_HEAD_CLASSES};
use crate::codegen::channels::{ChannelPass, ChannelSpec};
use crate::codegen::elementwise::{
    ArangeSpec, BinarySpec, CastSpec, CompareSpec, CopySpec, FillSpec, SelectSpec, UnarySpec,
};
use crate::codegen::fused::{AdamSpec, CrossEntropySpec, RowSpec, SgdSpec};
use crate::codegen::index::{ConcatSpec, EmbedSpec, GatherSpec, IndexCheckSpec, ScatterAddSpec};
use crate::codegen::pool::{PoolOp, PoolSpec};
use crate::codegen::random::RandomUniformSpec;
use crate::codegen::reduce::{ArgReduceSpec, ReduceSpec, ReduceStage};
use crate::codegen::window::{FoldSpec, UnfoldSpec};
use crate::codegen::{self, Gen};
use crate::dtype::KernelDType;
use crate::ops::{ArgOp, BinaryOp, ChannelOp, CmpOp, ReduceOp, RowOp, UnaryOp};
use crate::params::Param;

/// How an elementwise kernel addresses its operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Variant {
    /// Every input is a strided view with its own [`crate::KernelLayout`] argument (broadcast
    /// and transposed views included); the output is contiguous.
    Strided,
    /// Every operand is one contiguous run of `n` elements (pass pointers advanced by the
    /// views' offsets); no layout arguments, no index arithmetic. Entry names end in `_contig`.
    Contiguous,
}

impl Variant {
    /// Both variants, strided first.
    pub const ALL: [Variant; 2] = [Variant::Strided, Variant::Contiguous];

    /// The entry-name suffix (`""` or `"_contig"`).
    pub fn suffix(self) -> &'static str {
        match self {
            Variant::Strided => "",
            Variant::Contiguous => "_contig",
        }
    }
}

/// One kernel entry point: which family, operation, dtypes and variant. Built from a family's
/// spec (whose `new` refuses unsupported combinations), it gives the entry point's name, its
/// arguments and a complete translation unit to compile with NVRTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelSpec {
    /// Elementwise function of one operand.
    Unary(UnarySpec),
    /// Elementwise function of two operands.
    Binary(BinarySpec),
    /// Elementwise comparison giving bool.
    Compare(CompareSpec),
    /// `cond ? a : b`.
    Select(SelectSpec),
    /// Dtype conversion.
    Cast(CastSpec),
    /// A buffer filled with one value.
    Fill(FillSpec),
    /// `start + i * step` into a contiguous buffer.
    Arange(ArangeSpec),
    /// A strided view copied into a contiguous buffer.
    Copy(CopySpec),
    /// A reduction over axes (one pass, or one of two).
    Reduce(ReduceSpec),
    /// Arg-max or arg-min along one axis.
    ArgReduce(ArgReduceSpec),
    /// Gather in the `[B, P, N, Q]` form.
    Gather(GatherSpec),
    /// Scatter-add in the `[B, P, N, Q]` form.
    ScatterAdd(ScatterAddSpec),
    /// One input of a concatenation into its slot.
    Concat(ConcatSpec),
    /// A strided write at strided positions (embed).
    Embed(EmbedSpec),
    /// Indices checked and wrapped on the device.
    IndexCheck(IndexCheckSpec),
    /// Uniform random numbers from a key.
    RandomUniform(RandomUniformSpec),
    /// Softmax, log-softmax or layer-norm rows.
    Row(RowSpec),
    /// Cross-entropy rows with integer labels, with the gradient.
    CrossEntropy(CrossEntropySpec),
    /// The Adam update in place.
    Adam(AdamSpec),
    /// The SGD update (with or without a velocity).
    Sgd(SgdSpec),
    /// Every tap of every 2-D window copied out (im2col).
    Unfold(UnfoldSpec),
    /// The taps of 2-D windows added back into the image (col2im).
    Fold(FoldSpec),
    /// One pass of the fused scaled dot-product attention.
    Attention(AttentionSpec),
    /// One pass of batch normalisation's per-channel kernels.
    Channel(ChannelSpec),
    /// A pooling kernel reading the padded windows in place.
    Pool(PoolSpec),
}

macro_rules! from_specs {
    ($($v:ident($t:ty)),* $(,)?) => {
        $(impl From<$t> for KernelSpec {
            fn from(s: $t) -> KernelSpec {
                KernelSpec::$v(s)
            }
        })*

        impl KernelSpec {
            fn generator(&self) -> &dyn Gen {
                match self {
                    $(KernelSpec::$v(s) => s,)*
                }
            }
        }
    };
}

from_specs!(
    Unary(UnarySpec),
    Binary(BinarySpec),
    Compare(CompareSpec),
    Select(SelectSpec),
    Cast(CastSpec),
    Fill(FillSpec),
    Arange(ArangeSpec),
    Copy(CopySpec),
    Reduce(ReduceSpec),
    ArgReduce(ArgReduceSpec),
    Gather(GatherSpec),
    ScatterAdd(ScatterAddSpec),
    Concat(ConcatSpec),
    Embed(EmbedSpec),
    IndexCheck(IndexCheckSpec),
    RandomUniform(RandomUniformSpec),
    Row(RowSpec),
    CrossEntropy(CrossEntropySpec),
    Adam(AdamSpec),
    Sgd(SgdSpec),
    Unfold(UnfoldSpec),
    Fold(FoldSpec),
    Attention(AttentionSpec),
    Channel(ChannelSpec),
    Pool(PoolSpec),
);

impl KernelSpec {
    /// The `extern "C"` name of the entry point: `nb_` + family + operation + dtypes (+
    /// `_contig`, `_partial`, `_finish`), e.g. `nb_unary_exp_f32`, `nb_cast_f16_i64_contig`,
    /// `nb_reduce_sum_bf16_partial`. Unique across the catalogue.
    pub fn entry_name(&self) -> String {
        self.generator().entry_name()
    }

    /// The entry point's arguments in launch order. The C signature is generated from this
    /// list. No two pointer arguments may alias (they are `__restrict__`).
    pub fn params(&self) -> Vec<Param> {
        self.generator().params()
    }

    /// The CUDA headers the source includes (`cuda_fp16.h`, `cuda_bf16.h`); NVRTC needs an
    /// include path holding them when this is not empty.
    pub fn headers(&self) -> Vec<&'static str> {
        codegen::headers(&self.params())
    }

    /// The complete, self-contained CUDA C translation unit defining this entry point (and
    /// nothing else `extern "C"`). Deterministic: the same spec always gives the same text.
    /// Shared code sits behind include guards and helpers are prefixed with the entry name, so
    /// several sources can also be concatenated into one module.
    pub fn source(&self) -> String {
        codegen::assemble(self.generator())
    }

    /// The family name (`unary`, `binary`, `compare`, `select`, `cast`, `fill`, `arange`, `copy`,
    /// `reduce`, `arg_reduce`, `gather`, `scatter_add`, `concat`, `embed`, `index_check`, `random_uniform`, `row`,
    /// `cross_entropy`, `adam`, `sgd`, `unfold`, `fold`, `attention`, `channel`, `pool`).
    pub fn family(&self) -> &'static str {
        match self {
            KernelSpec::Unary(_) => "unary",
            KernelSpec::Binary(_) => "binary",
            KernelSpec::Compare(_) => "compare",
            KernelSpec::Select(_) => "select",
            KernelSpec::Cast(_) => "cast",
            KernelSpec::Fill(_) => "fill",
            KernelSpec::Arange(_) => "arange",
            KernelSpec::Copy(_) => "copy",
            KernelSpec::Reduce(_) => "reduce",
            KernelSpec::ArgReduce(_) => "arg_reduce",
            KernelSpec::Gather(_) => "gather",
            KernelSpec::ScatterAdd(_) => "scatter_add",
            KernelSpec::Concat(_) => "concat",
            KernelSpec::Embed(_) => "embed",
            KernelSpec::IndexCheck(_) => "index_check",
            KernelSpec::RandomUniform(_) => "random_uniform",
            KernelSpec::Row(_) => "row",
            KernelSpec::CrossEntropy(_) => "cross_entropy",
            KernelSpec::Adam(_) => "adam",
            KernelSpec::Sgd(_) => "sgd",
            KernelSpec::Unfold(_) => "unfold",
            KernelSpec::Fold(_) => "fold",
            KernelSpec::Attention(_) => "attention",
            KernelSpec::Channel(_) => "channel",
            KernelSpec::Pool(_) => "pool",
        }
    }
}

/// Every kernel the CUDA backend can ask for: each family's supported operations x dtypes x
/// variants (or stages), in a fixed order. Unsupported combinations are left out (their spec
/// constructors refuse them).
pub fn catalogue() -> Vec<KernelSpec> {
    let mut out: Vec<KernelSpec> = Vec::new();
    let dtypes = KernelDType::ALL;
    let mut push = |r: Result<KernelSpec, crate::KernelError>| {
        if let Ok(s) = r {
            out.push(s);
        }
    };
    for &op in UnaryOp::ALL {
        for d in dtypes {
            for v in Variant::ALL {
                push(UnarySpec::new(op, d, v).map(Into::into));
            }
        }
    }
    for &op in BinaryOp::ALL {
        for d in dtypes {
            for v in Variant::ALL {
                push(BinarySpec::new(op, d, v).map(Into::into));
            }
        }
    }
    for &op in CmpOp::ALL {
        for d in dtypes {
            for v in Variant::ALL {
                push(CompareSpec::new(op, d, v).map(Into::into));
            }
        }
    }
    for d in dtypes {
        for v in Variant::ALL {
            push(SelectSpec::new(d, v).map(Into::into));
        }
    }
    for from in dtypes {
        for to in dtypes {
            for v in Variant::ALL {
                push(CastSpec::new(from, to, v).map(Into::into));
            }
        }
    }
    for d in dtypes {
        push(FillSpec::new(d).map(Into::into));
        push(ArangeSpec::new(d).map(Into::into));
        push(CopySpec::new(d).map(Into::into));
    }
    for &op in ReduceOp::ALL {
        for d in dtypes {
            for stage in ReduceStage::ALL {
                push(ReduceSpec::new(op, d, stage).map(Into::into));
            }
        }
    }
    for &op in ArgOp::ALL {
        for d in dtypes {
            push(ArgReduceSpec::new(op, d).map(Into::into));
        }
    }
    for d in dtypes {
        push(GatherSpec::new(d).map(Into::into));
        push(ScatterAddSpec::new(d).map(Into::into));
        for v in Variant::ALL {
            push(ConcatSpec::new(d, v).map(Into::into));
        }
        push(EmbedSpec::new(d).map(Into::into));
    }
    push(IndexCheckSpec::new().map(Into::into));
    for d in dtypes {
        push(RandomUniformSpec::new(d).map(Into::into));
    }
    for &op in RowOp::ALL {
        for d in dtypes {
            push(RowSpec::new(op, d).map(Into::into));
        }
    }
    for d in dtypes {
        push(CrossEntropySpec::new(d).map(Into::into));
        push(AdamSpec::new(d).map(Into::into));
        for momentum in [false, true] {
            push(SgdSpec::new(d, momentum).map(Into::into));
        }
    }
    for d in dtypes {
        push(UnfoldSpec::new(d).map(Into::into));
        push(FoldSpec::new(d).map(Into::into));
    }
    for pass in AttentionPass::ALL {
        for d in dtypes {
            for masked in [false, true] {
                for head in ATTENTION_HEAD_CLASSES {
                    push(AttentionSpec::new(pass, d, masked, head).map(Into::into));
                }
            }
        }
    }
    for &op in ChannelOp::ALL {
        for d in dtypes {
            for pass in ChannelPass::ALL {
                push(ChannelSpec::new(op, d, pass).map(Into::into));
            }
        }
    }
    for op in PoolOp::ALL {
        for d in dtypes {
            push(PoolSpec::new(op, d).map(Into::into));
        }
    }
    out
}
