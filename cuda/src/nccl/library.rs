//! Finding and opening libnccl, and the part of NCCL's C API that nabla uses, as function
//! pointers read from the library.
//!
//! We open NCCL ourselves instead of through cudarc's `nccl` module: cudarc builds its file
//! names from the CUDA version (`libnccl.so`, `libnccl.so.13`, ...), but NCCL numbers its
//! library by its own major version, and pip's `nvidia-nccl-cu13` wheel (what PyTorch installs)
//! ships only `libnccl.so.2`. Here the search is `NABLA_NCCL_LIBRARY` (a path or a file name)
//! when set, else `libnccl.so.2` then `libnccl.so` on the loader's path.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

/// The environment variable that names the NCCL library to open (a path, or a file name for
/// the loader's search).
pub const LIBRARY_ENV: &str = "NABLA_NCCL_LIBRARY";

/// NCCL's opaque communicator handle (`ncclComm_t`).
pub(crate) type RawComm = *mut c_void;
/// A CUDA stream handle (`cudaStream_t`, the same object as the driver's `CUstream`).
pub(crate) type RawStream = *mut c_void;

/// `ncclUniqueId`: 128 opaque bytes, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct RawUniqueId {
    pub bytes: [u8; 128],
}

/// `ncclSuccess`.
pub(crate) const SUCCESS: c_int = 0;
/// `ncclInProgress` (a non-blocking communicator still working).
pub(crate) const IN_PROGRESS: c_int = 7;
/// `ncclSum`.
pub(crate) const SUM: c_int = 0;

type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueId = unsafe extern "C" fn(*mut RawUniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut RawComm, c_int, RawUniqueId, c_int) -> c_int;
type AllReduce = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, RawStream) -> c_int;
type Broadcast = unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, RawComm, RawStream) -> c_int;
type CommOp = unsafe extern "C" fn(RawComm) -> c_int;
type CommGetAsyncError = unsafe extern "C" fn(RawComm, *mut c_int) -> c_int;
type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
type GetLastError = unsafe extern "C" fn(RawComm) -> *const c_char;

/// The NCCL functions nabla calls.
pub(crate) struct Symbols {
    pub get_version: GetVersion,
    pub get_unique_id: GetUniqueId,
    pub comm_init_rank: CommInitRank,
    pub all_reduce: AllReduce,
    pub broadcast: Broadcast,
    pub comm_destroy: CommOp,
    pub comm_abort: CommOp,
    pub comm_get_async_error: CommGetAsyncError,
    pub get_error_string: GetErrorString,
    pub get_last_error: GetLastError,
}

/// An NCCL version, as `ncclGetVersion` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NcclVersion {
    /// Major version (2 for every NCCL in use).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch level.
    pub patch: u32,
}

impl NcclVersion {
    /// Decodes `ncclGetVersion`'s code: `major * 10000 + minor * 100 + patch` since NCCL 2.9,
    /// `major * 1000 + minor * 100 + patch` before.
    pub fn from_code(code: u32) -> NcclVersion {
        let (major, rest) = if code >= 10_000 {
            (code / 10_000, code % 10_000)
        } else {
            (code / 1_000, code % 1_000)
        };
        NcclVersion {
            major,
            minor: rest / 100,
            patch: rest % 100,
        }
    }
}

impl std::fmt::Display for NcclVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Why NCCL cannot be used here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NcclUnavailable {
    /// No candidate file could be opened.
    #[error(
        "NCCL is not available: could not open {}. Install NCCL (pip: nvidia-nccl-cu13, which PyTorch \
         brings) and set {LIBRARY_ENV} to its libnccl.so.2 (for a wheel: <site-packages>/nvidia/nccl/lib/\
         libnccl.so.2) or add its folder to LD_LIBRARY_PATH; without NCCL, gradients of GPU tensors travel \
         through the host communicator",
        tried.iter().map(|(name, why)| format!("{name} ({why})")).collect::<Vec<_>>().join(", ")
    )]
    NotFound {
        /// Each file name tried, with the loader's answer.
        tried: Vec<(String, String)>,
    },
    /// A file opened but lacks a function NCCL has (not NCCL, or far too old).
    #[error("{path} is not a usable NCCL library: it has no {symbol} ({why}); nabla needs NCCL 2.13 or later")]
    MissingSymbol {
        /// The file.
        path: String,
        /// The function it lacks.
        symbol: &'static str,
        /// The loader's answer.
        why: String,
    },
}

/// An opened NCCL library.
pub struct NcclLibrary {
    pub(crate) symbols: Symbols,
    name: String,
    version: NcclVersion,
    // Kept open for as long as the symbols are used (for the process's lifetime when cached).
    _library: libloading::Library,
}

impl std::fmt::Debug for NcclLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NcclLibrary({}, NCCL {})", self.name, self.version)
    }
}

impl NcclLibrary {
    /// The file name or path it was opened under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The library's version.
    pub fn version(&self) -> NcclVersion {
        self.version
    }

    /// NCCL's text for a result code.
    pub(crate) fn error_string(&self, code: c_int) -> String {
        // SAFETY: ncclGetErrorString takes any code and returns a static C string (or null).
        let p = unsafe { (self.symbols.get_error_string)(code) };
        if p.is_null() {
            return format!("NCCL error {code}");
        }
        // SAFETY: a non-null result is a NUL-terminated static string.
        unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// The file names to try, in order: `NABLA_NCCL_LIBRARY` alone when set (`env` reads it),
/// else `libnccl.so.2` and `libnccl.so`.
pub fn candidates(env: impl Fn(&str) -> Option<String>) -> Vec<String> {
    match env(LIBRARY_ENV).filter(|v| !v.trim().is_empty()) {
        Some(v) => vec![v],
        None => vec!["libnccl.so.2".into(), "libnccl.so".into()],
    }
}

/// Opens the first of `names` that the loader finds and that has NCCL's functions.
pub fn open_first(names: &[String]) -> Result<NcclLibrary, NcclUnavailable> {
    let mut tried = Vec::new();
    for name in names {
        // SAFETY: opening a shared library runs its initialisers; NCCL's do no more than set up
        // its own state.
        match unsafe { libloading::Library::new(name) } {
            Ok(library) => return bind(library, name),
            Err(e) => tried.push((name.clone(), e.to_string())),
        }
    }
    Err(NcclUnavailable::NotFound { tried })
}

fn bind(library: libloading::Library, name: &str) -> Result<NcclLibrary, NcclUnavailable> {
    fn get<T: Copy>(library: &libloading::Library, path: &str, symbol: &'static str) -> Result<T, NcclUnavailable> {
        // SAFETY: each symbol is read with the C signature NCCL's header declares for it.
        unsafe { library.get::<T>(symbol.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| NcclUnavailable::MissingSymbol {
                path: path.to_string(),
                symbol,
                why: e.to_string(),
            })
    }
    let symbols = Symbols {
        get_version: get(&library, name, "ncclGetVersion")?,
        get_unique_id: get(&library, name, "ncclGetUniqueId")?,
        comm_init_rank: get(&library, name, "ncclCommInitRank")?,
        all_reduce: get(&library, name, "ncclAllReduce")?,
        broadcast: get(&library, name, "ncclBroadcast")?,
        comm_destroy: get(&library, name, "ncclCommDestroy")?,
        comm_abort: get(&library, name, "ncclCommAbort")?,
        comm_get_async_error: get(&library, name, "ncclCommGetAsyncError")?,
        get_error_string: get(&library, name, "ncclGetErrorString")?,
        get_last_error: get(&library, name, "ncclGetLastError")?,
    };
    let mut code: c_int = 0;
    // SAFETY: an out-parameter query that needs no GPU.
    let status = unsafe { (symbols.get_version)(&mut code) };
    if status != SUCCESS {
        return Err(NcclUnavailable::MissingSymbol {
            path: name.to_string(),
            symbol: "ncclGetVersion",
            why: format!("it returned error {status}"),
        });
    }
    Ok(NcclLibrary {
        symbols,
        name: name.to_string(),
        version: NcclVersion::from_code(code.max(0) as u32),
        _library: library,
    })
}

/// The process's NCCL library, opened once from [`candidates`] of the environment. Never
/// panics: a missing library is an error that says what to install and where to point.
pub fn library() -> Result<&'static NcclLibrary, NcclUnavailable> {
    static LIBRARY: OnceLock<Result<NcclLibrary, NcclUnavailable>> = OnceLock::new();
    LIBRARY
        .get_or_init(|| open_first(&candidates(|k| std::env::var(k).ok())))
        .as_ref()
        .map_err(Clone::clone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decode_both_encodings() {
        assert_eq!(
            NcclVersion::from_code(23203),
            NcclVersion {
                major: 2,
                minor: 32,
                patch: 3
            }
        );
        assert_eq!(NcclVersion::from_code(2804).to_string(), "2.8.4");
    }

    #[test]
    fn the_override_alone_is_tried_when_set() {
        assert_eq!(candidates(|_| None), vec!["libnccl.so.2", "libnccl.so"]);
        assert_eq!(
            candidates(|k| (k == LIBRARY_ENV).then(|| "/opt/nccl/libnccl.so.2".to_string())),
            vec!["/opt/nccl/libnccl.so.2"]
        );
        assert_eq!(candidates(|_| Some("  ".into())).len(), 2);
    }

    #[test]
    fn a_missing_library_is_an_error_naming_every_file_tried_and_what_to_do() {
        let names = vec![
            "/nonexistent/libnccl.so.2".to_string(),
            "libnccl-nabla-absent.so".to_string(),
        ];
        let e = open_first(&names).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("/nonexistent/libnccl.so.2 ("), "{text}");
        assert!(text.contains("libnccl-nabla-absent.so ("), "{text}");
        assert!(
            text.contains(LIBRARY_ENV) && text.contains("nvidia-nccl-cu13"),
            "{text}"
        );
    }

    #[test]
    fn a_library_without_nccls_functions_is_refused_by_name() {
        // libm is on every glibc system and has no NCCL symbol.
        let e = open_first(&["libm.so.6".to_string()]).unwrap_err();
        match &e {
            NcclUnavailable::MissingSymbol { path, symbol, .. } => {
                assert_eq!(path, "libm.so.6");
                assert_eq!(*symbol, "ncclGetVersion");
            }
            other => panic!("expected a missing symbol, got {other:?}"),
        }
        assert!(e.to_string().contains("is not a usable NCCL library"), "{e}");
    }
}
