//! `--device` for the examples: the CPU, or the GPU numbered `LOCAL_RANK` (0 without a
//! launcher) through the CUDA backend when the build has the `cuda` feature; and, for GPU runs
//! on several ranks, NCCL as the group's device transport.

use nabla as nb;
use nb::Device;

/// The device `name` (`cpu` or `cuda`), opened, or a message naming the flag and what to do.
pub fn open_device(name: &str) -> Result<Device, String> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => open_cuda(),
        other => Err(format!("--device {other}: expected cpu or cuda")),
    }
}

/// `group` with the device transport for `device`: NCCL for a GPU when the job has more than
/// one rank (unless `NABLA_NCCL=0`, which keeps gradients on the host transport), else `group`
/// as it is. Collective: every rank calls it.
pub fn with_device_transport(group: nb::dist::ProcessGroup, device: Device) -> Result<nb::dist::ProcessGroup, String> {
    let wanted = std::env::var("NABLA_NCCL").map(|v| v != "0").unwrap_or(true);
    match device {
        Device::Cuda(_) if group.world_size() > 1 && wanted => with_nccl(group),
        _ => Ok(group),
    }
}

#[cfg(feature = "cuda")]
static CUDA: std::sync::OnceLock<std::sync::Arc<nb::cuda::CudaBackend<nb::cuda::CudaDevice>>> =
    std::sync::OnceLock::new();

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Device, String> {
    let ordinal = std::env::var("LOCAL_RANK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let backend = nb::cuda::init(ordinal).map_err(|e| format!("--device cuda: {e}"))?;
    let _ = CUDA.set(backend);
    Ok(Device::Cuda(ordinal))
}

#[cfg(feature = "cuda")]
fn with_nccl(group: nb::dist::ProcessGroup) -> Result<nb::dist::ProcessGroup, String> {
    let backend = CUDA
        .get()
        .ok_or("internal error: NCCL asked for before the GPU was opened")?;
    nb::dist::with_nccl(group, backend).map_err(|e| format!("--device cuda: {e} (NABLA_NCCL=0 runs without NCCL)"))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Device, String> {
    Err("--device cuda: this build has no CUDA backend; build with `--features cuda`".into())
}

#[cfg(not(feature = "cuda"))]
fn with_nccl(group: nb::dist::ProcessGroup) -> Result<nb::dist::ProcessGroup, String> {
    // Unreachable: without the `cuda` feature no device is a GPU.
    Ok(group)
}
