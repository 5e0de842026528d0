//! NVRTC compilation of the generated kernels to CUBIN for the device's architecture, with a
//! disk cache keyed by the full source, the architecture, and the NVRTC and driver versions
//! (the in-memory cache of loaded functions is [`super::CudaDevice`]'s).
//!
//! Cache entries are `<hash>.cubin` plus `<hash>.key` holding the whole key text; an entry is
//! used only when its key text equals the expected one, so a hash collision or a damaged file
//! means a recompile, never a wrong kernel. Files are written to a temporary name and renamed.

use std::ffi::{CStr, CString, c_char, c_int};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use nabla_kernels::KernelSpec;

use crate::api::ApiError;

/// Compiles kernels for one architecture.
pub(crate) struct Compiler {
    /// `sm_90` and the like.
    arch: String,
    /// A directory holding `cuda_fp16.h` and `cuda_bf16.h`, for the f16/bf16 kernels.
    include: Option<PathBuf>,
    /// Where compiled kernels are kept between runs (`None`: no disk cache).
    cache_dir: Option<PathBuf>,
    /// The NVRTC and driver versions, part of every key.
    versions: String,
}

/// The directory of the CUDA headers: `NABLA_CUDA_INCLUDE`, `$CUDA_HOME/include`,
/// `/usr/local/cuda/include`, or the `nvidia` pip wheels' include directories next to the
/// loaded Python packages (`site-packages/nvidia/cu13/include`, `.../cuda_runtime/include`).
pub fn find_include_dir() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("NABLA_CUDA_INCLUDE") {
        candidates.push(p.into());
    }
    if let Ok(p) = std::env::var("CUDA_HOME").or_else(|_| std::env::var("CUDA_PATH")) {
        candidates.push(Path::new(&p).join("include"));
    }
    candidates.push("/usr/local/cuda/include".into());
    // pip wheels: every `nvidia` package directory on LD_LIBRARY_PATH's parents and the usual
    // site-packages locations.
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(ld) = std::env::var("LD_LIBRARY_PATH") {
        for dir in ld.split(':').filter(|d| !d.is_empty()) {
            let mut p = PathBuf::from(dir);
            while p.pop() {
                if p.ends_with("nvidia") {
                    roots.push(p.clone());
                    break;
                }
            }
        }
    }
    for base in ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"] {
        if let Ok(entries) = std::fs::read_dir(base) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if name.starts_with("python3") {
                    for sp in ["site-packages", "dist-packages"] {
                        roots.push(e.path().join(sp).join("nvidia"));
                    }
                }
            }
        }
    }
    for root in roots {
        for sub in [
            "cu13/include",
            "cu12/include",
            "cuda_runtime/include",
            "cuda_nvrtc/include",
        ] {
            candidates.push(root.join(sub));
        }
    }
    candidates
        .into_iter()
        .find(|d| d.join("cuda_fp16.h").is_file() && d.join("cuda_bf16.h").is_file())
}

/// The default disk cache: `NABLA_KERNEL_CACHE` (empty turns it off), else
/// `$XDG_CACHE_HOME/nabla/kernels`, else `~/.cache/nabla/kernels`.
fn default_cache_dir() -> Option<PathBuf> {
    match std::env::var("NABLA_KERNEL_CACHE") {
        Ok(p) if p.is_empty() => return None,
        Ok(p) => return Some(p.into()),
        Err(_) => {}
    }
    let base = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("HOME").map(|h| Path::new(&h).join(".cache")))
        .ok()?;
    Some(base.join("nabla").join("kernels"))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl Compiler {
    /// A compiler for compute capability `major.minor`, with the driver version `driver`.
    pub(crate) fn new(major: i32, minor: i32, driver: i32) -> Compiler {
        let (mut vmaj, mut vmin): (c_int, c_int) = (0, 0);
        // SAFETY: two out-parameters; NVRTC was found present by `check()` before this runs.
        unsafe { nvrtc_sys::nvrtcVersion(&mut vmaj, &mut vmin) };
        Compiler {
            arch: format!("sm_{major}{minor}"),
            include: find_include_dir(),
            cache_dir: default_cache_dir(),
            versions: format!("nvrtc {vmaj}.{vmin}, driver {driver}"),
        }
    }

    /// The architecture kernels are compiled for.
    pub(crate) fn arch(&self) -> &str {
        &self.arch
    }

    /// True when compiled kernels are kept on disk.
    pub(crate) fn has_disk_cache(&self) -> bool {
        self.cache_dir.is_some()
    }

    /// What compiles the kernels: architecture, versions, include directory and disk cache.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} ({}), headers {}, disk cache {}",
            self.arch,
            self.versions,
            self.include
                .as_ref()
                .map_or("not found".into(), |d| d.display().to_string()),
            self.cache_dir
                .as_ref()
                .map_or("off".into(), |d| d.display().to_string())
        )
    }

    /// The CUBIN of `spec`, from the disk cache (unless `fresh`) or freshly compiled (and then
    /// cached), and whether it came from the cache.
    pub(crate) fn cubin(&self, spec: &KernelSpec, fresh: bool) -> Result<(Vec<u8>, bool), ApiError> {
        let source = spec.source();
        let key = format!("{}\n{}\n{}", self.arch, self.versions, source);
        let name = format!("{}-{:016x}", spec.entry_name(), fnv1a(key.as_bytes()));
        if !fresh
            && let Some(dir) = &self.cache_dir
            && std::fs::read(dir.join(format!("{name}.key"))).ok().as_deref() == Some(key.as_bytes())
            && let Ok(bin) = std::fs::read(dir.join(format!("{name}.cubin")))
        {
            return Ok((bin, true));
        }
        let bin = self.compile(spec, &source)?;
        if let Some(dir) = &self.cache_dir {
            // A cache that cannot be written only costs a recompile next time.
            let _ = store(dir, &name, key.as_bytes(), &bin);
        }
        Ok((bin, false))
    }

    fn compile(&self, spec: &KernelSpec, source: &str) -> Result<Vec<u8>, ApiError> {
        let entry = spec.entry_name();
        let mut options = vec![
            format!("--gpu-architecture={}", self.arch),
            "-default-device".into(),
            "--std=c++17".into(),
        ];
        if !spec.headers().is_empty() {
            match &self.include {
                Some(dir) => options.push(format!("-I{}", dir.display())),
                None => {
                    return Err(ApiError::new(format!(
                        "compiling {entry}: it needs {:?}, and no CUDA include directory holding them was \
                         found; set NABLA_CUDA_INCLUDE (pip: site-packages/nvidia/cu13/include)",
                        spec.headers()
                    )));
                }
            }
        }
        let src = CString::new(source).map_err(|_| ApiError::new(format!("{entry}: the source holds a NUL byte")))?;
        let name = CString::new(format!("{entry}.cu")).expect("entry names hold no NUL");
        let prog = nvrtc::create_program(&src, Some(&name))
            .map_err(|e| ApiError::new(format!("nvrtcCreateProgram for {entry}: {e:?}")))?;
        // SAFETY: `prog` is a live program from here until it is destroyed below, once.
        let read = || unsafe {
            if let Err(e) = nvrtc::compile_program(prog, &options) {
                let log =
                    nvrtc::get_program_log(prog).map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned());
                return Err(ApiError::new(format!(
                    "NVRTC could not compile {entry} for {} ({e:?}); options {options:?}; log:\n{}",
                    self.arch,
                    log.unwrap_or_default()
                )));
            }
            let mut size = 0usize;
            nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size)
                .result()
                .map_err(|e| ApiError::new(format!("nvrtcGetCUBINSize: {e:?}")))?;
            let mut bin = vec![0u8; size];
            nvrtc_sys::nvrtcGetCUBIN(prog, bin.as_mut_ptr() as *mut c_char)
                .result()
                .map_err(|e| ApiError::new(format!("nvrtcGetCUBIN: {e:?}")))?;
            Ok(bin)
        };
        let out = read();
        // SAFETY: created above and not yet destroyed.
        let _ = unsafe { nvrtc::destroy_program(prog) };
        out
    }
}

/// Writes a cache entry atomically (temporary names, then renames: the key last, so a reader
/// never pairs a new key with an old binary). The temporary names are unique to the call, so
/// that two devices of one process, or two processes, never write into one file.
fn store(dir: &Path, name: &str, key: &[u8], bin: &[u8]) -> std::io::Result<()> {
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let call = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = |ext: &str| dir.join(format!(".{name}.{ext}.{}.{call}", std::process::id()));
    std::fs::write(tmp("cubin"), bin)?;
    std::fs::rename(tmp("cubin"), dir.join(format!("{name}.cubin")))?;
    std::fs::write(tmp("key"), key)?;
    std::fs::rename(tmp("key"), dir.join(format!("{name}.key")))
}
