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
    cuda_libraries_in(&std::fs::read_to_string("/proc/self/maps").unwrap_or_default())
}

/// The CUDA library paths of a `/proc/<pid>/maps` text, in order of first appearance, each once.
fn cuda_libraries_in(maps: &str) -> Vec<String> {
    const STEMS: [&str; 6] = [
        "libcuda.",
        "libnvrtc.",
        "libnvrtc-builtins",
        "libcublas.",
        "libcublasLt.",
        "libnccl.",
    ];
    let mut out: Vec<String> = Vec::new();
    for line in maps.lines() {
        let Some(path) = line.split_whitespace().nth(5) else {
            continue;
        };
        let file = path.rsplit('/').next().unwrap_or(path);
        if STEMS.iter().any(|p| file.starts_with(p)) && !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_cuda_libraries_of_a_maps_text_are_listed_once_each() {
        let maps = "\
7f00-7f01 r--p 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6
7f01-7f02 r-xp 00001000 08:01 2 /venv/nvidia/cu13/lib/libnvrtc.so.13
7f02-7f03 r--p 00002000 08:01 2 /venv/nvidia/cu13/lib/libnvrtc.so.13
7f03-7f04 r-xp 00000000 08:01 3 /usr/lib/x86_64-linux-gnu/libcuda.so.580.159.03
7f04-7f05 rw-p 00000000 00:00 0
7f05-7f06 r-xp 00000000 08:01 4 /venv/nvidia/cu13/lib/libcublasLt.so.13
7f06-7f07 r-xp 00000000 08:01 5 /opt/other/libcudart_static_helper.so
";
        assert_eq!(
            super::cuda_libraries_in(maps),
            [
                "/venv/nvidia/cu13/lib/libnvrtc.so.13",
                "/usr/lib/x86_64-linux-gnu/libcuda.so.580.159.03",
                "/venv/nvidia/cu13/lib/libcublasLt.so.13",
            ]
        );
        // This process's own list holds CUDA libraries only (none unless a GPU test ran).
        assert!(super::loaded_libraries().iter().all(|p| p.contains("lib")));
    }
}
