//! Fused scaled dot-product attention: the generated `nb_attention_*` kernels (blocks of
//! queries forward; blocks of queries, then of keys, backward; each staging tiles of the other
//! operand in shared memory), over dense copies of the operands, with no `[Lq, Lk]` tensor. A boolean mask is read in place as a strided view (a
//! key padding mask broadcast over heads and queries is never expanded). f32 and f64 with
//! head widths up to `nabla_kernels::ATTENTION_MAX_HEAD`; other operands give `None` and the
//! op layer composes.

use nabla_core::DType;
use nabla_core::storage::RawTensor;
use nabla_kernels::launch::LaunchDims;
use nabla_kernels::{
    ATTENTION_MAX_HEAD, ATTENTION_THREADS, AttentionPass, AttentionSpec, AttentionTuning, KernelDType, KernelLayout,
    KernelSpec, launch,
};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

/// The extents of an attention call: matrices (the product of the leading axes), queries,
/// keys, the query/key width and the value width.
#[derive(Clone, Copy)]
struct Extents {
    matrices: usize,
    lq: usize,
    lk: usize,
    dim: usize,
    dv: usize,
}

impl Extents {
    /// The extents of `q`, `k` and `v`, or `None` when the kernels do not take them (a dtype
    /// other than f32 and f64, operands of different dtypes, among them the backward's `rest`,
    /// an empty extent, or a head wider than the kernels hold).
    fn of(q: &RawTensor, k: &RawTensor, v: &RawTensor, rest: &[&RawTensor]) -> Option<Extents> {
        let dtype = q.dtype();
        let same = [k, v].iter().chain(rest).all(|x| x.dtype() == dtype);
        if !same || !matches!(dtype, DType::F32 | DType::F64) {
            return None;
        }
        let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
        let r = qs.len();
        let e = Extents {
            matrices: qs[..r - 2].iter().product(),
            lq: qs[r - 2],
            lk: ks[r - 2],
            dim: qs[r - 1],
            dv: vs[r - 1],
        };
        let fits = [e.lq, e.lk, e.dim, e.dv].iter().all(|&n| n > 0) && e.dim.max(e.dv) <= ATTENTION_MAX_HEAD;
        fits.then_some(e)
    }

    /// The wider of the query/key and value widths (which picks the kernels' head class).
    fn head(&self) -> usize {
        self.dim.max(self.dv)
    }

    /// The kernel of `pass` for these extents (in the head class they need, spread over lanes
    /// as `tuning` says) and its launch over `rows` rows of every matrix.
    fn pass(
        &self,
        pass: AttentionPass,
        dtype: KernelDType,
        masked: bool,
        rows: usize,
        tuning: AttentionTuning,
        sm_count: u32,
    ) -> (KernelSpec, LaunchDims) {
        // A tuning the head class does not allow leaves that class on the default.
        let s = AttentionSpec::new(pass, dtype, masked, self.head()).map(|s| s.with_tuning(tuning).unwrap_or(s));
        let per_block = s.as_ref().map_or(1, AttentionSpec::rows_per_block);
        let blocks = self.matrices * rows.div_ceil(per_block);
        let dims = launch::for_row_blocks(blocks as i64, ATTENTION_THREADS, sm_count);
        (spec(s, "attention"), dims)
    }

    /// The arguments every pass takes, by name.
    fn arg<M>(&self, name: &str, scale: f64, causal: bool) -> Option<LaunchArg<'static, M>> {
        let v = |n: usize| LaunchArg::I64(n as i64);
        Some(match name {
            "matrices" => v(self.matrices),
            "lq" => v(self.lq),
            "lk" => v(self.lk),
            "dim" => v(self.dim),
            "dv" => v(self.dv),
            "scale" => LaunchArg::F64(scale),
            "causal" => LaunchArg::I32(causal as i32),
            _ => return None,
        })
    }
}

/// The tuning `NABLA_ATTENTION_TUNING=LANE_BYTES,ROWS` names (see [`AttentionTuning`]), else
/// the default; a malformed value is refused naming the variable.
pub(super) fn tuning_from_env() -> AttentionTuning {
    let Ok(text) = std::env::var("NABLA_ATTENTION_TUNING") else {
        return AttentionTuning::DEFAULT;
    };
    let parts: Vec<Option<usize>> = text.split(',').map(|p| p.trim().parse().ok()).collect();
    match parts[..] {
        [Some(lane_bytes), Some(rows_per_group)] => AttentionTuning {
            lane_bytes,
            rows_per_group,
        },
        _ => panic!(
            "NABLA_ATTENTION_TUNING={text:?}: expected LANE_BYTES,ROWS (say 64,1: bytes of a row per lane, \
             32, 64 or 128, and rows per group of lanes, 1, 2 or 4); unset it for the default"
        ),
    }
}

/// A boolean mask `[lead.., Lq, Lk]` (a broadcast view, with `q`'s leading shape) as the
/// masked kernels read it: its buffer from the start, its layout (which locates each matrix),
/// and its query and key strides.
struct MaskView<'a> {
    raw: &'a RawTensor,
    layout: KernelLayout,
    rs: i64,
    cs: i64,
}

impl<'a> MaskView<'a> {
    /// The view of `mask` for queries and keys of extents `e`, or `None` when the kernels
    /// cannot read it (not bool, another shape, or a layout of too many axes).
    fn of<A: DeviceApi>(mask: &'a RawTensor, q: &RawTensor, e: &Extents) -> Option<MaskView<'a>> {
        let (shape, strides) = (mask.shape(), mask.layout().strides());
        let r = shape.len();
        let lead = &q.shape()[..q.shape().len() - 2];
        if mask.dtype() != DType::Bool || r < 2 || &shape[..r - 2] != lead || shape[r - 2..] != [e.lq, e.lk] {
            return None;
        }
        Some(MaskView {
            raw: mask,
            layout: CudaBackend::<A>::layout_of(mask)?,
            rs: strides[r - 2] as i64,
            cs: strides[r - 1] as i64,
        })
    }
}

/// The arguments of the masked passes, by name (`None` for other names).
fn mask_arg<'m, A: DeviceApi>(
    be: &'m CudaBackend<A>,
    mask: &MaskView<'m>,
    name: &str,
) -> Option<LaunchArg<'m, A::Mem>> {
    Some(match name {
        "mask" => LaunchArg::Ptr(&be.buf(mask.raw).mem, 0),
        "mask_layout" => LaunchArg::Layout(mask.layout),
        "mask_rs" => LaunchArg::I64(mask.rs),
        "mask_cs" => LaunchArg::I64(mask.cs),
        _ => return None,
    })
}

pub(super) fn attention<A: DeviceApi>(
    be: &CudaBackend<A>,
    q: &RawTensor,
    k: &RawTensor,
    v: &RawTensor,
    mask: Option<&RawTensor>,
    scale: f64,
    causal: bool,
) -> Option<RawTensor> {
    let e = Extents::of(q, k, v, &[])?;
    let mask = match mask {
        Some(m) => Some(MaskView::of::<A>(m, q, &e)?),
        None => None,
    };
    let (q, k, v) = (be.dense(q), be.dense(k), be.dense(v));
    let mut shape = q.shape()[..q.shape().len() - 2].to_vec();
    shape.extend([e.lq, e.dv + 2]);
    let out = be.empty(&shape, q.dtype());
    if e.matrices == 0 {
        return Some(out);
    }
    let (s, dims) = e.pass(
        AttentionPass::Forward,
        kernel_dtype(q.dtype()),
        mask.is_some(),
        e.lq,
        be.attention_tuning(),
        be.api.sm_count(),
    );
    be.run(&s, dims, |p| match p.name {
        "out" => Some(be.run_ptr(&out)),
        "q" => Some(be.run_ptr(&q)),
        "k" => Some(be.run_ptr(&k)),
        "v" => Some(be.run_ptr(&v)),
        name => e
            .arg(name, scale, causal)
            .or_else(|| mask_arg(be, mask.as_ref()?, name)),
    });
    Some(out)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn attention_backward<A: DeviceApi>(
    be: &CudaBackend<A>,
    q: &RawTensor,
    k: &RawTensor,
    v: &RawTensor,
    mask: Option<&RawTensor>,
    packed: &RawTensor,
    d_o: &RawTensor,
    scale: f64,
    causal: bool,
) -> Option<RawTensor> {
    let e = Extents::of(q, k, v, &[packed, d_o])?;
    let mask = match mask {
        Some(m) => Some(MaskView::of::<A>(m, q, &e)?),
        None => None,
    };
    let [q, k, v, packed, d_o] = [q, k, v, packed, d_o].map(|x| be.dense(x));
    let mut shape = q.shape()[..q.shape().len() - 2].to_vec();
    shape.push(e.lq * e.dim + e.lk * e.dim + e.lk * e.dv);
    let grads = be.empty(&shape, q.dtype());
    if e.matrices == 0 {
        return Some(grads);
    }
    // Each query's sum(d_o * o), written by the first pass and read by the second.
    let row_dots = be.empty(&[e.matrices * e.lq], q.dtype());
    let dtype = kernel_dtype(q.dtype());
    for (pass, rows) in [
        (AttentionPass::BackwardQueries, e.lq),
        (AttentionPass::BackwardKeys, e.lk),
    ] {
        let (s, dims) = e.pass(
            pass,
            dtype,
            mask.is_some(),
            rows,
            be.attention_tuning(),
            be.api.sm_count(),
        );
        be.run(&s, dims, |p| match p.name {
            "grads" => Some(be.run_ptr(&grads)),
            "row_dots" => Some(be.run_ptr(&row_dots)),
            "q" => Some(be.run_ptr(&q)),
            "k" => Some(be.run_ptr(&k)),
            "v" => Some(be.run_ptr(&v)),
            "packed" => Some(be.run_ptr(&packed)),
            "d_o" => Some(be.run_ptr(&d_o)),
            name => e
                .arg(name, scale, causal)
                .or_else(|| mask_arg(be, mask.as_ref()?, name)),
        });
    }
    Some(grads)
}
