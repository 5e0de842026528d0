//! Checkpoints: the training step, the RNG state, the parameters, the optimizer state and
//! free-form metadata, saved atomically to one file and loaded back bit-exactly.
//!
//! Parameters and optimizer state are flat lists of tensor leaves: flatten a pytree with
//! [`Tree::leaves`](nabla_core::Tree::leaves) before saving and rebuild it after loading with
//! `template.rebuild(leaves)`.
//!
//! ```no_run
//! use nabla_core::{Rng, Tensor};
//! use nabla_nn::checkpoint::{load, save, Checkpoint};
//! use std::path::Path;
//!
//! let rng = Rng::new(0);
//! let ckpt = Checkpoint {
//!     step: 100,
//!     rng_state: rng.state(),
//!     params: vec![Tensor::from_vec(vec![1.0f32, 2.0], &[2])],
//!     ..Default::default()
//! };
//! save(Path::new("run/ckpt.bin"), &ckpt)?;
//! let back = load(Path::new("run/ckpt.bin"))?;
//! let (seed, counter) = back.rng_state;
//! let rng = Rng::from_state(seed, counter);
//! # Ok::<(), nabla_nn::checkpoint::CheckpointError>(())
//! ```
//!
//! # File format (version 1)
//!
//! All integers are little-endian.
//!
//! | offset | bytes | content |
//! | --- | --- | --- |
//! | 0 | 8 | magic `b"NABLACKP"` |
//! | 8 | 4 | format version, u32 ([`FORMAT_VERSION`]) |
//! | 12 | 8 | header length `H`, u64 |
//! | 20 | `H` | header, encoded with bincode 2 (serde), standard config with fixed-width integers |
//! | 20 + `H` | `D` | tensor data: each tensor's elements in row-major order (bool: one byte, 0 or 1) |
//! | 20 + `H` + `D` | 8 | checksum of bytes `0 .. 20 + H + D`, u64 (see [`checksum`]) |
//!
//! The header is, field by field (u64 = 8 bytes, u8 = 1 byte, strings are a u64 byte length
//! then UTF-8 bytes, sequences and maps are a u64 count then their items):
//!
//! - `step: u64`, `rng_state: (u64, u64)`,
//! - `metadata`: map of string to string, in key order,
//! - `tensors`: sequence of entries `{ section: u8 (0 params, 1 optimizer state), dtype: u8
//!   (0 f32, 1 f64, 2 i64, 3 bool, 4 f16, 5 bf16), shape: sequence of u64, offset: u64, byte_len: u64 }`, the
//!   parameters first, each list in order; `offset` counts from the start of the tensor data,
//! - `data_len: u64`, the length `D` of the tensor data.
//!
//! The reader checks every declared length against the file before using it, so a truncated,
//! damaged or foreign file gives a [`CheckpointError`] rather than a panic or a huge allocation:
//! memory use while loading is bounded by a small multiple of the file's size.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nabla_core::storage::{CpuBuffer, RawTensor};
use nabla_core::{DType, Tensor};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The first 8 bytes of every checkpoint file.
pub const MAGIC: &[u8; 8] = b"NABLACKP";

/// The file format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Bytes before the header: magic, version, header length.
const PREAMBLE_LEN: usize = 20;
/// Bytes of the trailing checksum.
const CHECKSUM_LEN: usize = 8;

const SECTION_PARAMS: u8 = 0;
const SECTION_OPTIMIZER: u8 = 1;

/// Everything needed to resume training.
#[derive(Clone, Debug, Default)]
pub struct Checkpoint {
    /// The number of optimizer steps taken.
    pub step: u64,
    /// The RNG state, from [`Rng::state`](nabla_core::Rng::state); restore it with
    /// [`Rng::from_state`](nabla_core::Rng::from_state).
    pub rng_state: (u64, u64),
    /// The parameter leaves, in [`Tree::leaves`](nabla_core::Tree::leaves) order.
    pub params: Vec<Tensor>,
    /// The optimizer state leaves (moments, counters), in the optimizer's own order.
    pub optimizer_state: Vec<Tensor>,
    /// Free-form key-value pairs (model name, config, git revision, ...).
    pub metadata: BTreeMap<String, String>,
}

/// Why a checkpoint could not be saved or loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file could not be opened, read, written or renamed.
    #[error("checkpoint {}: {source}", path.display())]
    Io {
        /// The checkpoint file.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// The file does not start with the checkpoint magic bytes: it is some other kind of file.
    #[error(
        "{} is not a nabla checkpoint (it does not start with the magic bytes NABLACKP); \
         check the path",
        path.display()
    )]
    NotACheckpoint {
        /// The file.
        path: PathBuf,
    },
    /// The file is a checkpoint in a format version this build cannot read.
    #[error(
        "checkpoint {} has format version {found}, but this build of nabla reads version \
         {supported}; was it written by a newer nabla? Load it with that version",
        path.display()
    )]
    UnsupportedVersion {
        /// The checkpoint file.
        path: PathBuf,
        /// The version stored in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The file ends before the data it declares: an interrupted copy or a full disk.
    #[error(
        "checkpoint {} is truncated: {detail}; the copy or save was probably interrupted \
         (use an earlier checkpoint or copy the file again)",
        path.display()
    )]
    Truncated {
        /// The checkpoint file.
        path: PathBuf,
        /// What was expected and what the file holds.
        detail: String,
    },
    /// The file has the right length but inconsistent or damaged content.
    #[error(
        "checkpoint {} is corrupt: {detail}; the file was damaged or modified after it was \
         written (use an earlier checkpoint or a fresh copy)",
        path.display()
    )]
    Corrupt {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

impl CheckpointError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            CheckpointError::Io { path, .. }
            | CheckpointError::NotACheckpoint { path }
            | CheckpointError::UnsupportedVersion { path, .. }
            | CheckpointError::Truncated { path, .. }
            | CheckpointError::Corrupt { path, .. } => path,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checksum

/// The file checksum ("nabla-mix64"), over `bytes`.
///
/// The input is read as little-endian u64 words (the last, partial word zero-padded). Starting
/// from `h = 0xcbf2_9ce4_8422_2325`, each word `w` does `h = (h ^ w) * 0x9e37_79b9_7f4a_7c15`
/// (wrapping) then `h ^= h >> 32`; at the end `h = (h ^ len) * 0xff51_afd7_ed55_8ccd`,
/// `h ^= h >> 33`, where `len` is the input length in bytes. Every step is a bijection of `h`,
/// so any change confined to one word is always detected. It guards against damage, not
/// against deliberate tampering.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut m = Mix64::new();
    m.update(bytes);
    m.finish()
}

/// Streaming form of [`checksum`].
struct Mix64 {
    h: u64,
    pending: [u8; 8],
    npending: usize,
    len: u64,
}

impl Mix64 {
    fn new() -> Mix64 {
        Mix64 {
            h: 0xcbf2_9ce4_8422_2325,
            pending: [0; 8],
            npending: 0,
            len: 0,
        }
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.h ^= self.h >> 32;
    }

    fn update(&mut self, mut bytes: &[u8]) {
        self.len = self.len.wrapping_add(bytes.len() as u64);
        if self.npending > 0 {
            let take = (8 - self.npending).min(bytes.len());
            self.pending[self.npending..self.npending + take].copy_from_slice(&bytes[..take]);
            self.npending += take;
            bytes = &bytes[take..];
            if self.npending < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.pending));
            self.npending = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            self.word(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
        self.npending = rest.len();
    }

    fn finish(mut self) -> u64 {
        if self.npending > 0 {
            self.pending[self.npending..].fill(0);
            self.word(u64::from_le_bytes(self.pending));
        }
        let mut h = (self.h ^ self.len).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

// ---------------------------------------------------------------------------------------------
// Header

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    step: u64,
    rng_state: (u64, u64),
    // Borrowed strings: bincode checks a borrowed string's length against the input before
    // slicing, whereas owned strings are allocated at their declared length first.
    #[serde(borrow)]
    metadata: BTreeMap<&'a str, &'a str>,
    #[serde(deserialize_with = "seq_without_prealloc")]
    tensors: Vec<Entry>,
    data_len: u64,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    section: u8,
    dtype: u8,
    #[serde(deserialize_with = "seq_without_prealloc")]
    shape: Vec<u64>,
    offset: u64,
    byte_len: u64,
}

/// Deserializes a sequence without reserving room for its declared length, so a damaged count
/// cannot cause a large allocation: the vector only grows with elements actually decoded.
fn seq_without_prealloc<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct SeqVisitor<T>(PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for SeqVisitor<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::new();
            while let Some(x) = seq.next_element()? {
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(SeqVisitor(PhantomData))
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_fixed_int_encoding()
}

fn dtype_tag(d: DType) -> u8 {
    match d {
        DType::F32 => 0,
        DType::F64 => 1,
        DType::I64 => 2,
        DType::Bool => 3,
        DType::F16 => 4,
        DType::BF16 => 5,
    }
}

fn dtype_from_tag(tag: u8) -> Option<DType> {
    match tag {
        0 => Some(DType::F32),
        1 => Some(DType::F64),
        2 => Some(DType::I64),
        3 => Some(DType::Bool),
        4 => Some(DType::F16),
        5 => Some(DType::BF16),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Saving

/// Saves `ckpt` to `path` atomically.
///
/// The bytes go to a temporary file next to `path` (`<name>.tmp-<pid>-<n>`), which is flushed to
/// disk and then renamed over `path`; the directory is then synced (best effort). A crash or an
/// error at any point leaves either the old file or the new one at `path`, never a mix, and the
/// temporary file is removed on error. Tensors on any device are copied to the host.
///
/// # Panics
///
/// When a tensor is read inside `vmap` (its values are not available there).
pub fn save(path: &Path, ckpt: &Checkpoint) -> Result<(), CheckpointError> {
    let io_err = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let Some(name) = path.file_name() else {
        return Err(io_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path does not name a file",
        )));
    };
    let tmp = temp_path(path, name);
    let result = write_file(&tmp, ckpt)
        .map_err(|e| io::Error::new(e.kind(), format!("writing temporary file {}: {e}", tmp.display())))
        .and_then(|()| {
            fs::rename(&tmp, path)
                .map_err(|e| io::Error::new(e.kind(), format!("renaming {} over it: {e}", tmp.display())))
        });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(e));
    }
    sync_parent_dir(path);
    Ok(())
}

/// A fresh temporary name next to `path`, unique per process and call.
fn temp_path(path: &Path, name: &std::ffi::OsStr) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = OsString::from(name);
    tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
    path.with_file_name(tmp_name)
}

/// Makes the rename durable; failures are ignored (not every platform can open directories).
fn sync_parent_dir(path: &Path) {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A buffered file writer that hashes what it writes.
struct HashingWriter {
    inner: BufWriter<File>,
    hash: Mix64,
}

impl HashingWriter {
    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hash.update(bytes);
        self.inner.write_all(bytes)
    }
}

fn too_large(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, format!("{what} is too large to save"))
}

fn write_file(tmp: &Path, ckpt: &Checkpoint) -> io::Result<()> {
    let sections = [
        (SECTION_PARAMS, &ckpt.params),
        (SECTION_OPTIMIZER, &ckpt.optimizer_state),
    ];
    let mut entries = Vec::with_capacity(ckpt.params.len() + ckpt.optimizer_state.len());
    let mut data_len = 0u64;
    for (section, tensors) in sections {
        for t in tensors.iter() {
            let byte_len = t
                .shape()
                .iter()
                .try_fold(t.dtype().size_in_bytes() as u64, |acc, &d| acc.checked_mul(d as u64))
                .ok_or_else(|| too_large("a tensor"))?;
            entries.push(Entry {
                section,
                dtype: dtype_tag(t.dtype()),
                shape: t.shape().iter().map(|&d| d as u64).collect(),
                offset: data_len,
                byte_len,
            });
            data_len = data_len
                .checked_add(byte_len)
                .ok_or_else(|| too_large("the tensor data"))?;
        }
    }
    let header = Header {
        step: ckpt.step,
        rng_state: ckpt.rng_state,
        metadata: ckpt.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        tensors: entries,
        data_len,
    };
    let header_bytes = bincode::serde::encode_to_vec(&header, bincode_config())
        .map_err(|e| io::Error::other(format!("encoding the header: {e}")))?;

    let file = OpenOptions::new().write(true).create_new(true).open(tmp)?;
    let mut w = HashingWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: Mix64::new(),
    };
    w.put(MAGIC)?;
    w.put(&FORMAT_VERSION.to_le_bytes())?;
    w.put(&(header_bytes.len() as u64).to_le_bytes())?;
    w.put(&header_bytes)?;
    let mut buf = Vec::new();
    for t in ckpt.params.iter().chain(&ckpt.optimizer_state) {
        buf.clear();
        tensor_bytes(t, &mut buf);
        w.put(&buf)?;
    }
    let sum = w.hash.finish();
    let mut inner = w.inner;
    inner.write_all(&sum.to_le_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()
}

/// Appends the tensor's elements in row-major order, little-endian.
fn tensor_bytes(t: &Tensor, out: &mut Vec<u8>) {
    out.extend_from_slice(&t.to_host_buffer().to_le_bytes());
}

// ---------------------------------------------------------------------------------------------
// Loading

/// Loads a checkpoint saved by [`save`]. The tensors are on the CPU, contiguous, with the
/// dtypes and shapes they were saved with.
///
/// A missing, unreadable, truncated, damaged or foreign file, or one from a newer format
/// version, gives the matching [`CheckpointError`]; this never panics.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = read_file(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &bytes)
}

/// Reads a regular file to its end. The size the file system reports only sizes the first
/// allocation: some files (those under `/proc`, for one) report 0 bytes and still have content,
/// so what the checks below see is what was read, never the reported size.
fn read_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let reported = usize::try_from(meta.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the file is too large for this machine"))?;
    let mut bytes = Vec::new();
    bytes.try_reserve_exact(reported).map_err(|_| {
        io::Error::new(
            io::ErrorKind::OutOfMemory,
            format!("cannot allocate {reported} bytes to read the file"),
        )
    })?;
    // A file that grows while it is read is read as it ends up (and then fails the checks).
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Parses and validates a whole checkpoint file.
fn parse(path: &Path, bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let truncated = |detail: String| CheckpointError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    let corrupt = |detail: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let len = bytes.len();

    // Magic and version.
    if len < MAGIC.len() {
        return if MAGIC.starts_with(bytes) {
            Err(truncated(if len == 0 {
                "reading it to its end gave 0 bytes".to_string()
            } else {
                format!("the file has only {len} bytes, fewer than the 8-byte magic")
            }))
        } else {
            Err(CheckpointError::NotACheckpoint {
                path: path.to_path_buf(),
            })
        };
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(CheckpointError::NotACheckpoint {
            path: path.to_path_buf(),
        });
    }
    if len < 12 {
        return Err(truncated(format!(
            "the file has {len} bytes and ends inside the format version"
        )));
    }
    let version = read_u32(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(CheckpointError::UnsupportedVersion {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if len < PREAMBLE_LEN {
        return Err(truncated(format!(
            "the file has {len} bytes and ends inside the header length"
        )));
    }

    // Header.
    let header_len = read_u64(bytes, 12);
    let header_end = usize::try_from(header_len)
        .ok()
        .and_then(|h| h.checked_add(PREAMBLE_LEN))
        .filter(|&end| end.checked_add(CHECKSUM_LEN).is_some_and(|e| e <= len))
        .ok_or_else(|| {
            truncated(format!(
                "the header is declared as {header_len} bytes, but the file has only {len} bytes in all"
            ))
        })?;
    let header_bytes = &bytes[PREAMBLE_LEN..header_end];
    let (header, used): (Header<'_>, usize) = bincode::serde::borrow_decode_from_slice(header_bytes, bincode_config())
        .map_err(|e| corrupt(format!("the header does not decode ({e})")))?;
    if used != header_bytes.len() {
        return Err(corrupt(format!(
            "the header is declared as {header_len} bytes but decodes from {used}"
        )));
    }

    // Total length, then the checksum over everything before it.
    let data_len = header.data_len;
    let data_end = usize::try_from(data_len).ok().and_then(|d| d.checked_add(header_end));
    let expected_len = data_end.and_then(|e| e.checked_add(CHECKSUM_LEN));
    match expected_len {
        Some(expected) if expected == len => {}
        Some(expected) if expected < len => {
            return Err(corrupt(format!(
                "the file has {} unexpected bytes after its checksum ({len} bytes, {expected} expected)",
                len - expected
            )));
        }
        _ => {
            return Err(truncated(format!(
                "the header declares {data_len} bytes of tensor data, so the file should have \
                 {header_end} + {data_len} + {CHECKSUM_LEN} bytes, but it has {len}"
            )));
        }
    }
    let data_end = len - CHECKSUM_LEN;
    let stored = read_u64(bytes, data_end);
    let computed = checksum(&bytes[..data_end]);
    if stored != computed {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
        )));
    }

    // Tensors.
    let data = &bytes[header_end..data_end];
    let mut params = Vec::new();
    let mut optimizer_state = Vec::new();
    for (i, entry) in header.tensors.iter().enumerate() {
        let (list, name) = match entry.section {
            SECTION_PARAMS => (&mut params, "params"),
            SECTION_OPTIMIZER => (&mut optimizer_state, "optimizer_state"),
            other => {
                return Err(corrupt(format!(
                    "tensor table entry {i} has unknown section tag {other} (0 params, 1 optimizer state)"
                )));
            }
        };
        let what = format!("{name}[{}] (tensor table entry {i})", list.len());
        let t = decode_tensor(entry, data, &what).map_err(corrupt)?;
        list.push(t);
    }

    Ok(Checkpoint {
        step: header.step,
        rng_state: header.rng_state,
        params,
        optimizer_state,
        metadata: header
            .metadata
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    })
}

/// Checks one table entry against the tensor data and builds the tensor.
fn decode_tensor(entry: &Entry, data: &[u8], what: &str) -> Result<Tensor, String> {
    let dtype = dtype_from_tag(entry.dtype).ok_or_else(|| {
        format!(
            "{what} has unknown dtype tag {} (0 f32, 1 f64, 2 i64, 3 bool, 4 f16, 5 bf16)",
            entry.dtype
        )
    })?;
    let bad_shape = || format!("{what} has shape {:?}, too large for this machine", entry.shape);
    let mut shape = Vec::new();
    let mut numel = 1usize;
    // The layout's strides are products of the extents (zero counted as one) in `isize`.
    let mut stride_span = 1usize;
    for &d in &entry.shape {
        let d = usize::try_from(d).map_err(|_| bad_shape())?;
        numel = numel.checked_mul(d).ok_or_else(bad_shape)?;
        stride_span = stride_span
            .checked_mul(d.max(1))
            .filter(|&s| s <= isize::MAX as usize)
            .ok_or_else(bad_shape)?;
        shape.push(d);
    }
    let expected_bytes = numel.checked_mul(dtype.size_in_bytes()).ok_or_else(bad_shape)?;
    let start = usize::try_from(entry.offset).ok();
    let end = start.and_then(|s| usize::try_from(entry.byte_len).ok().and_then(|l| s.checked_add(l)));
    let (start, end) = match (start, end) {
        (Some(s), Some(e)) if e <= data.len() => (s, e),
        _ => {
            return Err(format!(
                "{what} claims {} bytes at offset {} of the tensor data, which has only {} bytes",
                entry.byte_len,
                entry.offset,
                data.len()
            ));
        }
    };
    if end - start != expected_bytes {
        return Err(format!(
            "{what} has shape {:?} and dtype {dtype} ({expected_bytes} bytes) but claims {} bytes",
            entry.shape, entry.byte_len
        ));
    }
    let raw = &data[start..end];
    let buf = CpuBuffer::from_le_bytes(dtype, raw).map_err(|e| format!("{what}: {e}"))?;
    let t = Tensor::from_raw(RawTensor::from_cpu(buf, &shape));
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_streaming_matches_one_shot() {
        let bytes: Vec<u8> = (0..100u32).map(|i| (i * 37 % 251) as u8).collect();
        for split in [0, 1, 3, 7, 8, 9, 15, 16, 50, 99, 100] {
            let mut m = Mix64::new();
            m.update(&bytes[..split]);
            m.update(&bytes[split..]);
            assert_eq!(m.finish(), checksum(&bytes), "split at {split}");
        }
        // Length is part of the hash: trailing zeros change it.
        assert_ne!(checksum(&[1, 2, 3]), checksum(&[1, 2, 3, 0]));
        assert_ne!(checksum(&[]), checksum(&[0]));
    }

    #[test]
    fn dtype_tags_round_trip() {
        for d in DType::ALL {
            assert_eq!(dtype_from_tag(dtype_tag(d)), Some(d));
        }
        assert_eq!(dtype_from_tag(6), None);
    }
}
