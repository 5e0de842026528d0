//! Whether CUDA can run here, as a typed answer instead of cudarc's panic.

use cudarc::driver::result as driver;

/// A library the CUDA backend loads at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Library {
    /// The driver API (`libcuda`), installed with the NVIDIA driver.
    Driver,
    /// The run-time compiler (`libnvrtc`), from a CUDA toolkit or the `nvidia-cuda-nvrtc` wheel.
    Nvrtc,
    /// cuBLAS (`libcublas`), from a CUDA toolkit or the `nvidia-cublas` wheel.
    Cublas,
}

impl Library {
    /// The name cudarc builds its candidate file names from.
    fn stem(self) -> &'static str {
        match self {
            Library::Driver => "cuda",
            Library::Nvrtc => "nvrtc",
            Library::Cublas => "cublas",
        }
    }

    /// What provides it, for messages.
    fn provider(self) -> &'static str {
        match self {
            Library::Driver => "the NVIDIA driver",
            Library::Nvrtc => "a CUDA toolkit or the nvidia-cuda-nvrtc pip wheel",
            Library::Cublas => "a CUDA toolkit or the nvidia-cublas pip wheel",
        }
    }

    fn present(self) -> bool {
        // SAFETY: these only try to open the library files (dlopen); no CUDA call is made.
        unsafe {
            match self {
                Library::Driver => cudarc::driver::sys::is_culib_present(),
                Library::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                Library::Cublas => cudarc::cublas::sys::is_culib_present(),
            }
        }
    }
}

/// Why CUDA cannot run here.
#[derive(Debug, thiserror::Error)]
pub enum CudaUnavailable {
    /// A library is not on the loader's path.
    #[error(
        "CUDA is not available: lib{} ({}) was not found; looked for {} on the dynamic loader's path \
         (LD_LIBRARY_PATH, then the system's). Install it or add its directory to LD_LIBRARY_PATH, \
         or run on the CPU (the default device)",
        library.stem(),
        library.provider(),
        looked_for.join(", ")
    )]
    Missing {
        /// Which library.
        library: Library,
        /// The file names tried, in order.
        looked_for: Vec<String>,
    },
    /// The driver is there but could not start, or sees no device.
    #[error("CUDA is not available: {0}")]
    NoDevice(String),
}

/// What [`check`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaInfo {
    /// The number of devices the driver sees.
    pub devices: usize,
    /// Their names, by ordinal.
    pub names: Vec<String>,
}

/// Checks, without panicking, that the driver, NVRTC and cuBLAS can be loaded and that the
/// driver sees at least one device.
pub fn check() -> Result<CudaInfo, CudaUnavailable> {
    for library in [Library::Driver, Library::Nvrtc, Library::Cublas] {
        if !library.present() {
            let mut looked_for: Vec<String> = Vec::new();
            for name in cudarc::get_lib_name_candidates(library.stem()) {
                if !looked_for.contains(&name) {
                    looked_for.push(name);
                }
            }
            return Err(CudaUnavailable::Missing { library, looked_for });
        }
    }
    let fail = |what: &str, e: cudarc::driver::DriverError| CudaUnavailable::NoDevice(format!("{what}: {e:?}"));
    driver::init().map_err(|e| fail("the driver did not start (cuInit)", e))?;
    let count = driver::device::get_count().map_err(|e| fail("cannot count devices", e))?;
    if count <= 0 {
        return Err(CudaUnavailable::NoDevice(
            "the driver sees no device (check CUDA_VISIBLE_DEVICES and nvidia-smi)".into(),
        ));
    }
    let mut names = Vec::new();
    for ordinal in 0..count {
        let dev = driver::device::get(ordinal).map_err(|e| fail("cannot open a device", e))?;
        names.push(driver::device::get_name(dev).map_err(|e| fail("cannot read a device's name", e))?);
    }
    Ok(CudaInfo {
        devices: count as usize,
        names,
    })
}

/// The CUDA libraries this process has loaded (driver, NVRTC, cuBLAS, NCCL), as paths from
/// `/proc/self/maps`, each once: which copy the loader picked when several are installed (a
/// system toolkit beside pip's wheels, say). Empty where `/proc` is not readable.
pub fn loaded_libraries() -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let file = path.rsplit('/').next().unwrap_or(path);
        let ours = [
            "libcuda.",
            "libnvrtc.",
            "libnvrtc-builtins",
            "libcublas.",
            "libcublasLt.",
            "libnccl.",
        ]
        .iter()
        .any(|p| file.starts_with(p));
        if ours && !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn loaded_libraries_lists_only_cuda_libraries() {
        // No CUDA library is loaded by this unit test binary unless a GPU test ran before it.
        for path in super::loaded_libraries() {
            assert!(path.contains("lib"), "{path}");
        }
    }
}
