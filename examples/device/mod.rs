//! `--device` for the examples: the CPU, or the GPU numbered `LOCAL_RANK` (0 without a
//! launcher) through the CUDA backend when the build has the `cuda` feature.

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

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Device, String> {
    let ordinal = std::env::var("LOCAL_RANK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    nb::cuda::init(ordinal).map_err(|e| format!("--device cuda: {e}"))?;
    Ok(Device::Cuda(ordinal))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Device, String> {
    Err("--device cuda: this build has no CUDA backend; build with `--features cuda`".into())
}
