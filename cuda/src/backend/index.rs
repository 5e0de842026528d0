//! Gather, scatter-add, concatenation and embedding. Gather and scatter-add take contiguous
//! `[B, P, N, Q]` operands and check every index on the device (the error record).

use nabla_core::DType;
use nabla_core::backend::IndexCheck;
use nabla_core::storage::RawTensor;
use nabla_kernels::{
    ConcatSlot, ConcatSpec, EmbedSpec, GatherSpec, IndexCheckSpec, KernelLayout, ScatterAddSpec, Variant, launch,
};

use super::{CudaBackend, kernel_dtype, spec};
use crate::api::{DeviceApi, LaunchArg};

/// Launches a gather or scatter-add `spec` over `out` (`[B, P, I, Q]` for gather, the base
/// `[B, P, N, Q]` for scatter-add), with `data` (`x` or `upd`) and `idx: [B, I]`, all
/// contiguous; `n` is the indexed extent `N`.
fn launch_bpnq<A: DeviceApi>(
    be: &CudaBackend<A>,
    spec: &nabla_kernels::KernelSpec,
    out: &RawTensor,
    data: (&str, &RawTensor),
    idx: &RawTensor,
    [b, p, n, q]: [usize; 4],
) {
    let count = idx.shape()[1];
    let total = (b * p * count * q) as i64;
    if total == 0 {
        return;
    }
    be.run(spec, launch::elementwise(total, be.api.sm_count()), |prm| {
        Some(match prm.name {
            "out" => be.run_ptr(out),
            "idx" => be.run_ptr(idx),
            name if name == data.0 => be.run_ptr(data.1),
            "batches" => LaunchArg::I64(b as i64),
            "pre" => LaunchArg::I64(p as i64),
            "n" => LaunchArg::I64(n as i64),
            "post" => LaunchArg::I64(q as i64),
            "count" => LaunchArg::I64(count as i64),
            // Core passes indices already in 0..N.
            "wrap_negative" => LaunchArg::I32(0),
            _ => return None,
        })
    });
}

/// The `[B, P, N, Q]` extents of a rank-4 tensor.
fn dims4(x: &RawTensor) -> [usize; 4] {
    let s = x.shape();
    [s[0], s[1], s[2], s[3]]
}

pub(super) fn gather<A: DeviceApi>(be: &CudaBackend<A>, x: &RawTensor, idx: &RawTensor) -> RawTensor {
    let (x, idx) = (be.dense(x), be.dense(idx));
    let [b, p, n, q] = dims4(&x);
    let out = be.empty(&[b, p, idx.shape()[1], q], x.dtype());
    let s = spec(GatherSpec::new(kernel_dtype(x.dtype())), "gather");
    launch_bpnq(be, &s, &out, ("x", &x), &idx, [b, p, n, q]);
    out
}

pub(super) fn scatter_add<A: DeviceApi>(
    be: &CudaBackend<A>,
    base: &RawTensor,
    idx: &RawTensor,
    upd: &RawTensor,
) -> RawTensor {
    // The kernel adds in place: into a fresh copy of `base`.
    let out = super::elementwise::copy(be, base);
    let (idx, upd) = (be.dense(idx), be.dense(upd));
    let s = spec(ScatterAddSpec::new(kernel_dtype(out.dtype())), "scatter_add");
    launch_bpnq(be, &s, &out, ("upd", &upd), &idx, dims4(&out));
    out
}

/// [`scatter_add`] into fresh zeros of `[B, P, n, Q]` (the gradient of a take): one fill and
/// the scatter, no copy of a base.
pub(super) fn scatter_add_to_zeros<A: DeviceApi>(
    be: &CudaBackend<A>,
    n: usize,
    idx: &RawTensor,
    upd: &RawTensor,
) -> RawTensor {
    let s = upd.shape();
    // A fresh buffer: `full` shares one-element constants, which must not be written.
    let out = super::elementwise::fill(be, &[s[0], s[1], n, s[3]], upd.dtype(), 0.0);
    let (idx, upd) = (be.dense(idx), be.dense(upd));
    let s = spec(ScatterAddSpec::new(kernel_dtype(out.dtype())), "scatter_add");
    launch_bpnq(be, &s, &out, ("upd", &upd), &idx, dims4(&out));
    out
}

pub(super) fn concat<A: DeviceApi>(be: &CudaBackend<A>, xs: &[&RawTensor], axis: usize) -> RawTensor {
    let mut shape = xs[0].shape().to_vec();
    let total: usize = xs.iter().map(|x| x.shape()[axis]).sum();
    shape[axis] = total;
    let out = be.empty(&shape, xs[0].dtype());
    let mut at = 0;
    for x in xs {
        let x = be.fitting(x);
        let n = x.layout().numel() as i64;
        let slot = ConcatSlot::new(x.shape(), axis, at, total);
        at += x.shape()[axis];
        if n == 0 {
            continue;
        }
        let v = if x.layout().is_contiguous() {
            Variant::Contiguous
        } else {
            Variant::Strided
        };
        let s = spec(ConcatSpec::new(kernel_dtype(x.dtype()), v), "concatenate");
        let layout = CudaBackend::<A>::layout_of(&x);
        be.run(&s, launch::elementwise(n, be.api.sm_count()), |p| {
            Some(match p.name {
                "out" => be.run_ptr(&out),
                "x" if v == Variant::Contiguous => be.run_ptr(&x),
                "x" => LaunchArg::Ptr(&be.buf(&x).mem, 0),
                "x_layout" => LaunchArg::Layout(layout?),
                "n" => LaunchArg::I64(n),
                "slot_len" => LaunchArg::I64(slot.slot_len),
                "out_row" => LaunchArg::I64(slot.out_row),
                "slot_start" => LaunchArg::I64(slot.slot_start),
                _ => return None,
            })
        });
    }
    out
}

pub(super) fn embed<A: DeviceApi>(
    be: &CudaBackend<A>,
    x: &RawTensor,
    shape: &[usize],
    starts: &[usize],
    steps: &[usize],
) -> RawTensor {
    let x = be.fitting(x);
    let out = super::elementwise::fill(be, shape, x.dtype(), 0.0);
    let n = x.layout().numel() as i64;
    if n == 0 {
        return out;
    }
    let target =
        KernelLayout::embed_target(shape, x.shape(), starts, steps).unwrap_or_else(|e| panic!("embed on cuda: {e}"));
    let layout = CudaBackend::<A>::layout_of(&x).expect("checked by fitting");
    let s = spec(EmbedSpec::new(kernel_dtype(x.dtype())), "embed");
    be.run(&s, launch::elementwise(n, be.api.sm_count()), |p| {
        Some(match p.name {
            "out" => LaunchArg::Ptr(&be.buf(&out).mem, 0),
            "out_layout" => LaunchArg::Layout(target),
            "x" => LaunchArg::Ptr(&be.buf(&x).mem, 0),
            "x_layout" => LaunchArg::Layout(layout),
            "n" => LaunchArg::I64(n),
            _ => return None,
        })
    });
    out
}

/// `idx` checked against `check` and wrapped, on the device; a bad index is reported with
/// `site` at the next read.
pub(super) fn check_indices<A: DeviceApi>(
    be: &CudaBackend<A>,
    idx: &RawTensor,
    check: &IndexCheck,
    site: i64,
) -> RawTensor {
    let idx = be.dense(idx);
    let out = be.empty(idx.shape(), DType::I64);
    let n = idx.layout().numel() as i64;
    if n == 0 {
        return out;
    }
    let s = spec(IndexCheckSpec::new(), "index check");
    be.run(&s, launch::elementwise(n, be.api.sm_count()), |p| {
        Some(match p.name {
            "out" => be.run_ptr(&out),
            "idx" => be.run_ptr(&idx),
            "n" => LaunchArg::I64(n),
            "extent" => LaunchArg::I64(check.extent as i64),
            "wrap_negative" => LaunchArg::I32(check.wrap_negative as i32),
            "site" => LaunchArg::I64(site),
            _ => return None,
        })
    });
    out
}
