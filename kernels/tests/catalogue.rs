//! Properties of the generated sources that need no GPU: unique entry points, one per
//! translation unit, deterministic text, headers only where needed, refused combinations, and
//! a golden source.

use std::collections::{BTreeMap, HashSet};

use nabla_kernels::*;

#[test]
fn entry_names_are_unique_and_defined_once_in_their_source() {
    let specs = catalogue();
    let mut seen = HashSet::new();
    for spec in &specs {
        let name = spec.entry_name();
        assert!(seen.insert(name.clone()), "entry {name} appears twice in the catalogue");
        assert!(
            name.starts_with("nb_")
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "{name}"
        );
        let src = spec.source();
        let decl = format!("extern \"C\" __global__ void {name}(");
        assert_eq!(
            src.matches(&decl).count(),
            1,
            "{name}: declaration missing from its source"
        );
        assert_eq!(src.matches("__global__").count(), 1, "{name}: more than one kernel");
        assert_eq!(src.matches("extern \"C\"").count(), 1, "{name}");
        // The signature lists the parameters in order.
        let sig_start = src.find(&decl).unwrap() + decl.len();
        let sig = &src[sig_start..sig_start + src[sig_start..].find(')').unwrap()];
        let names: Vec<&str> = sig.split(',').map(|p| p.split_whitespace().last().unwrap()).collect();
        let want: Vec<&str> = spec.params().iter().map(|p| p.name).collect();
        assert_eq!(names, want, "{name}");
    }
}

#[test]
fn sources_are_deterministic() {
    let a: Vec<(String, String)> = catalogue().iter().map(|s| (s.entry_name(), s.source())).collect();
    let b: Vec<(String, String)> = catalogue().iter().map(|s| (s.entry_name(), s.source())).collect();
    assert_eq!(a, b);
}

#[test]
fn headers_are_included_exactly_where_half_types_are_used() {
    for spec in catalogue() {
        let src = spec.source();
        let name = spec.entry_name();
        let fp16 = src.contains("#include <cuda_fp16.h>");
        let bf16 = src.contains("#include <cuda_bf16.h>");
        assert_eq!(fp16, src.contains("__half"), "{name}");
        assert_eq!(bf16, src.contains("bfloat16"), "{name}");
        let mut want = Vec::new();
        if fp16 {
            want.push("cuda_fp16.h");
        }
        if bf16 {
            want.push("cuda_bf16.h");
        }
        assert_eq!(spec.headers(), want, "{name}");
    }
}

#[test]
fn catalogue_covers_every_family() {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for spec in catalogue() {
        *counts.entry(spec.family()).or_default() += 1;
    }
    let want: BTreeMap<&str, usize> = [
        // 18 float-only ops x 4 floats + 4 ops x 6 signed dtypes + not on bool, x 2 variants.
        ("unary", (18 * 4 + 4 * 6 + 1) * 2),
        // add/mul/maximum/minimum on 8 dtypes, sub/div/pow on 7 numbers, and/or/xor on bool.
        ("binary", (4 * 8 + 3 * 7 + 3) * 2),
        ("compare", 6 * 8 * 2),
        ("select", 8 * 2),
        ("cast", 8 * 8 * 2),
        ("fill", 8),
        ("arange", 7),
        ("copy", 8),
        ("reduce", 4 * 8 * 3),
        ("arg_reduce", 2 * 8),
        ("gather", 8),
        ("scatter_add", 6),
        ("concat", 8 * 2),
        ("embed", 8),
        ("index_check", 1),
        ("random_uniform", 4),
        ("row", 7 * 4),
        ("cross_entropy", 4),
        ("adam", 4),
        // without and with a velocity.
        ("sgd", 4 * 2),
        ("unfold", 8),
        ("fold", 4),
        // forward, backward over queries, backward over keys; f32 and f64; without and with a
        // mask; four head width classes.
        ("attention", 3 * 2 * 2 * 4),
        // moments: partial and finish; the standardisation's backward: partial, finish and apply;
        // batch norm's backward: those and its sums; the scale and shift: apply.
        ("channel", (2 + 3 + 4 + 1) * 4),
        // the window sum, its transpose and the argmax.
        ("pool", 3 * 4),
    ]
    .into_iter()
    .collect();
    assert_eq!(counts, want);
}

#[test]
fn unsupported_combinations_are_refused() {
    use KernelDType::*;
    let cases: Vec<(Result<KernelSpec, KernelError>, &str)> = vec![
        (
            ArangeSpec::new(Bool).map(Into::into),
            "there is no arange kernel for bool; it takes numbers (f32, f64, f16, bf16, i64, i32, u8)",
        ),
        (
            UnarySpec::new(UnaryOp::Exp, I64, Variant::Strided).map(Into::into),
            "there is no unary exp kernel for i64; it takes f32, f64, f16 or bf16",
        ),
        (
            BinarySpec::new(BinaryOp::And, F32, Variant::Contiguous).map(Into::into),
            "there is no binary and kernel for f32; it takes bool",
        ),
        (
            UnarySpec::new(UnaryOp::Not, F32, Variant::Strided).map(Into::into),
            "no unary not kernel for f32",
        ),
        (
            UnarySpec::new(UnaryOp::Neg, U8, Variant::Strided).map(Into::into),
            "no unary neg kernel for u8; it takes f32, f64, f16, bf16, i64 or i32",
        ),
        (
            UnarySpec::new(UnaryOp::Sign, Bool, Variant::Strided).map(Into::into),
            "no unary sign kernel for bool",
        ),
        (
            BinarySpec::new(BinaryOp::Sub, Bool, Variant::Strided).map(Into::into),
            "no binary sub kernel for bool",
        ),
        (
            BinarySpec::new(BinaryOp::Xor, I64, Variant::Strided).map(Into::into),
            "no binary xor kernel for i64",
        ),
        (ScatterAddSpec::new(U8).map(Into::into), "no scatter_add kernel for u8"),
        (
            ScatterAddSpec::new(Bool).map(Into::into),
            "no scatter_add kernel for bool",
        ),
        (
            RowSpec::new(RowOp::Softmax, I64).map(Into::into),
            "no softmax kernel for i64",
        ),
        (
            CrossEntropySpec::new(I32).map(Into::into),
            "no cross_entropy kernel for i32",
        ),
        (AdamSpec::new(Bool).map(Into::into), "no adam kernel for bool"),
    ];
    for (r, msg) in cases {
        let err = r.expect_err(msg);
        assert!(err.to_string().contains(msg), "{err} (expected: {msg})");
    }
    // A few that exist.
    assert!(UnarySpec::new(UnaryOp::Neg, I32, Variant::Strided).is_ok());
    assert!(BinarySpec::new(BinaryOp::Pow, I64, Variant::Strided).is_ok());
    assert!(BinarySpec::new(BinaryOp::Maximum, Bool, Variant::Strided).is_ok());
    assert!(ScatterAddSpec::new(BF16).is_ok());
}

#[test]
fn names_follow_the_scheme() {
    use KernelDType::*;
    let name = |s: KernelSpec| s.entry_name();
    assert_eq!(
        name(UnarySpec::new(UnaryOp::Exp, F32, Variant::Strided).unwrap().into()),
        "nb_unary_exp_f32"
    );
    assert_eq!(
        name(UnarySpec::new(UnaryOp::Exp, F32, Variant::Contiguous).unwrap().into()),
        "nb_unary_exp_f32_contig"
    );
    assert_eq!(
        name(CastSpec::new(BF16, I64, Variant::Strided).unwrap().into()),
        "nb_cast_bf16_i64"
    );
    assert_eq!(
        name(
            ReduceSpec::new(ReduceOp::Sum, F16, ReduceStage::Partial)
                .unwrap()
                .into()
        ),
        "nb_reduce_sum_f16_partial"
    );
    assert_eq!(
        name(ArgReduceSpec::new(ArgOp::ArgMin, U8).unwrap().into()),
        "nb_argmin_u8"
    );
    assert_eq!(
        name(RowSpec::new(RowOp::LogSoftmax, F64).unwrap().into()),
        "nb_log_softmax_f64"
    );
    assert_eq!(name(ScatterAddSpec::new(I32).unwrap().into()), "nb_scatter_add_i32");
}

#[test]
fn reduce_partials_are_accumulators() {
    use KernelDType::*;
    let acc = |op, d| ReduceSpec::new(op, d, ReduceStage::Partial).unwrap().acc_type();
    assert_eq!(acc(ReduceOp::Sum, BF16), AccType::F32);
    assert_eq!(acc(ReduceOp::Sum, F32), AccType::F32);
    assert_eq!(acc(ReduceOp::Max, F64), AccType::F64);
    assert_eq!(acc(ReduceOp::Sum, I64), AccType::U64);
    assert_eq!(acc(ReduceOp::Min, I64), AccType::I64);
    assert_eq!(acc(ReduceOp::Prod, U8), AccType::U32);
    assert_eq!(acc(ReduceOp::Max, Bool), AccType::I32);
    let spec: KernelSpec = ReduceSpec::new(ReduceOp::Sum, F16, ReduceStage::Partial)
        .unwrap()
        .into();
    assert_eq!(spec.params()[0].ty, ArgType::AccOut(AccType::F32));
    assert!(spec.source().contains("float* __restrict__ partial"));
}

/// The full source of one small kernel, so that generator changes show up in review. Set
/// `NABLA_BLESS=1` to rewrite it after an intended change.
#[test]
fn golden_source() {
    let spec: KernelSpec = UnarySpec::new(UnaryOp::Sigmoid, KernelDType::BF16, Variant::Strided)
        .unwrap()
        .into();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/nb_unary_sigmoid_bf16.cu");
    let src = spec.source();
    if std::env::var_os("NABLA_BLESS").is_some() {
        std::fs::write(&path, &src).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        src == want,
        "the source of {} changed; review the diff and rerun with NABLA_BLESS=1 to accept it:\n{src}",
        spec.entry_name()
    );
}
