//! Checkpoint files: bit-exact round trips, atomic replacement, and errors (never panics or huge
//! allocations) for truncated, damaged, foreign and newer-version files.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use nabla_core::{DType, Rng, Tensor, bf16, f16};
use nabla_nn::checkpoint::{Checkpoint, CheckpointError, FORMAT_VERSION, MAGIC, checksum, load, save};

// ---------------------------------------------------------------------------------------------
// Helpers

/// Records the largest single allocation made on the current thread while tracking is on.
struct TrackingAlloc;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn record(size: usize) {
    let _ = TRACKING.try_with(|on| {
        if on.get() {
            let _ = LARGEST.try_with(|m| m.set(m.get().max(size)));
        }
    });
}

unsafe impl GlobalAlloc for TrackingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: TrackingAlloc = TrackingAlloc;

/// Runs `f` and returns its result with the largest single allocation it made on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|m| m.set(0));
    TRACKING.with(|on| on.set(true));
    let r = f();
    TRACKING.with(|on| on.set(false));
    (r, LARGEST.with(|m| m.get()))
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("nabla-ckpt-{}-{test}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn entries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

fn write_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Recomputes the trailing checksum after an edit, so the checks behind it are reached.
fn fix_checksum(b: &mut [u8]) {
    let n = b.len() - 8;
    let sum = checksum(&b[..n]);
    write_u64(b, n, sum);
}

fn assert_names_path(e: &CheckpointError, path: &Path) {
    let msg = e.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name {path:?}: {msg}"
    );
    assert_eq!(e.path(), path);
}

/// Asserts that two tensors have the same dtype, shape and bit-identical elements.
fn assert_bit_equal(a: &Tensor, b: &Tensor, what: &str) {
    assert_eq!(a.dtype(), b.dtype(), "{what}: dtype");
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    let bytes = |t: &Tensor| t.to_host_buffer().to_le_bytes();
    assert_eq!(bytes(a), bytes(b), "{what}: {} bits", a.dtype());
}

/// A checkpoint with every dtype, a scalar, empty tensors, a strided view and awkward values.
fn rich_checkpoint() -> Checkpoint {
    let f32s = vec![
        1.5f32,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::from_bits(0x7fc0_1234), // NaN with a payload
        f32::from_bits(1),           // smallest subnormal
    ];
    let f64s = vec![
        std::f64::consts::PI,
        f64::from_bits(0xfff8_0000_dead_beef),
        f64::MIN_POSITIVE,
        -1e300,
    ];
    let mut rng = Rng::new(42);
    let _ = rng.uniform(&[3], 0.0, 1.0, DType::F32);
    let mut metadata = BTreeMap::new();
    metadata.insert("model".to_string(), "mlp 784-128-10".to_string());
    metadata.insert("".to_string(), "empty key".to_string());
    metadata.insert("unicode ∇".to_string(), "".to_string());
    Checkpoint {
        step: u64::MAX - 3,
        rng_state: rng.state(),
        params: vec![
            Tensor::from_vec(f32s, &[2, 3]),
            Tensor::from_vec(f64s, &[4]),
            Tensor::from_vec(vec![i64::MIN, -1, 0, i64::MAX], &[2, 2]),
            Tensor::from_vec(vec![true, false, false, true, true], &[5]),
            Tensor::from_vec(vec![2.5f32], &[]),
            Tensor::from_vec(Vec::<f64>::new(), &[0, 3]),
            Tensor::from_vec(Vec::<bool>::new(), &[0]),
            Tensor::from_vec((0..6).map(|i| i as f32).collect(), &[2, 3]).transpose(),
            Tensor::from_vec(
                vec![
                    bf16::from_f32(-1.5),
                    bf16::from_bits(0x7fc1),
                    bf16::INFINITY,
                    bf16::from_bits(1),
                ],
                &[2, 2],
            ),
            Tensor::from_vec(
                vec![f16::from_f32(65504.0), f16::from_bits(0x7e01), f16::NEG_ZERO],
                &[3],
            ),
        ],
        optimizer_state: vec![
            Tensor::from_vec(vec![7i64], &[]),
            Tensor::from_vec(vec![0.25f64; 6], &[3, 2]),
        ],
        metadata,
    }
}

/// A small checkpoint whose header layout the format test spells out byte by byte.
fn simple_checkpoint() -> Checkpoint {
    let mut metadata = BTreeMap::new();
    metadata.insert("key".to_string(), "value".to_string());
    Checkpoint {
        step: 7,
        rng_state: (11, 13),
        params: vec![Tensor::from_vec((0..3 * 1031).map(|i| i as f32).collect(), &[3, 1031])],
        optimizer_state: vec![],
        metadata,
    }
}

// Byte offsets in the file of `simple_checkpoint`, from the documented format (checked below).
const AT_META_COUNT: usize = 44;
const AT_VALUE_LEN: usize = 63;
const AT_TENSOR_COUNT: usize = 76;
const AT_SECTION: usize = 84;
const AT_DTYPE: usize = 85;
const AT_DIM0: usize = 94;
const AT_DIM1: usize = 102;
const AT_OFFSET: usize = 110;
const AT_BYTE_LEN: usize = 118;
const AT_DATA_LEN: usize = 126;
const DATA_START: usize = 134;

fn saved_simple(dir: &TempDir) -> (PathBuf, Vec<u8>) {
    let path = dir.path("simple.ckpt");
    save(&path, &simple_checkpoint()).unwrap();
    let bytes = fs::read(&path).unwrap();
    (path, bytes)
}

// ---------------------------------------------------------------------------------------------
// Round trips and the format

#[test]
fn round_trip_is_bit_exact_for_all_dtypes() {
    let dir = TempDir::new("round_trip");
    let path = dir.path("ckpt.bin");
    let ckpt = rich_checkpoint();
    save(&path, &ckpt).unwrap();
    let back = load(&path).unwrap();

    assert_eq!(back.step, ckpt.step);
    assert_eq!(back.rng_state, ckpt.rng_state);
    assert_eq!(back.metadata, ckpt.metadata);
    assert_eq!(back.params.len(), ckpt.params.len());
    assert_eq!(back.optimizer_state.len(), ckpt.optimizer_state.len());
    for (i, (a, b)) in ckpt.params.iter().zip(&back.params).enumerate() {
        assert_bit_equal(a, b, &format!("params[{i}]"));
    }
    for (i, (a, b)) in ckpt.optimizer_state.iter().zip(&back.optimizer_state).enumerate() {
        assert_bit_equal(a, b, &format!("optimizer_state[{i}]"));
    }
    // The strided view comes back contiguous, in row-major order of the view.
    assert_eq!(back.params[7].shape(), &[3, 2]);
    assert_eq!(back.params[7].to_vec::<f32>(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    // The RNG resumes where it was.
    let (seed, counter) = back.rng_state;
    let mut resumed = Rng::from_state(seed, counter);
    let mut original = Rng::from_state(ckpt.rng_state.0, ckpt.rng_state.1);
    assert_eq!(
        resumed.uniform(&[4], 0.0, 1.0, DType::F64).to_vec::<f64>(),
        original.uniform(&[4], 0.0, 1.0, DType::F64).to_vec::<f64>()
    );
}

#[test]
fn empty_checkpoint_round_trips() {
    let dir = TempDir::new("empty");
    let path = dir.path("empty.ckpt");
    save(&path, &Checkpoint::default()).unwrap();
    let back = load(&path).unwrap();
    assert_eq!(back.step, 0);
    assert!(back.params.is_empty() && back.optimizer_state.is_empty() && back.metadata.is_empty());
}

#[test]
fn file_layout_matches_the_documented_format() {
    let dir = TempDir::new("layout");
    let (_, b) = saved_simple(&dir);
    assert_eq!(&b[..8], MAGIC);
    assert_eq!(u32::from_le_bytes(b[8..12].try_into().unwrap()), FORMAT_VERSION);
    assert_eq!(read_u64(&b, 12), (DATA_START - 20) as u64, "header length");
    assert_eq!(read_u64(&b, 20), 7, "step");
    assert_eq!((read_u64(&b, 28), read_u64(&b, 36)), (11, 13), "rng state");
    assert_eq!(read_u64(&b, AT_META_COUNT), 1, "metadata count");
    assert_eq!(read_u64(&b, 52), 3, "key length");
    assert_eq!(&b[60..63], b"key");
    assert_eq!(read_u64(&b, AT_VALUE_LEN), 5, "value length");
    assert_eq!(&b[71..76], b"value");
    assert_eq!(read_u64(&b, AT_TENSOR_COUNT), 1, "tensor count");
    assert_eq!(b[AT_SECTION], 0, "section params");
    assert_eq!(b[AT_DTYPE], 0, "dtype f32");
    assert_eq!(read_u64(&b, 86), 2, "rank");
    assert_eq!((read_u64(&b, AT_DIM0), read_u64(&b, AT_DIM1)), (3, 1031), "shape");
    assert_eq!(read_u64(&b, AT_OFFSET), 0, "offset");
    assert_eq!(read_u64(&b, AT_BYTE_LEN), 3 * 1031 * 4, "byte length");
    assert_eq!(read_u64(&b, AT_DATA_LEN), 3 * 1031 * 4, "data length");
    assert_eq!(b.len(), DATA_START + 3 * 1031 * 4 + 8);
    assert_eq!(
        &b[DATA_START + 4..DATA_START + 8],
        &1.0f32.to_le_bytes(),
        "second element"
    );
    let n = b.len() - 8;
    assert_eq!(read_u64(&b, n), checksum(&b[..n]), "checksum");
}

// ---------------------------------------------------------------------------------------------
// Damaged and foreign files

#[test]
fn truncation_at_every_seventh_byte_is_an_error() {
    let dir = TempDir::new("truncated");
    let full = dir.path("full.ckpt");
    save(&full, &rich_checkpoint()).unwrap();
    let bytes = fs::read(&full).unwrap();
    let cut_path = dir.path("cut.ckpt");
    for cut in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
        fs::write(&cut_path, &bytes[..cut]).unwrap();
        let (result, largest) = largest_allocation(|| load(&cut_path));
        let e = result.expect_err("a truncated file must not load");
        assert!(
            matches!(e, CheckpointError::Truncated { .. } | CheckpointError::Corrupt { .. }),
            "cut at {cut}: {e}"
        );
        assert_names_path(&e, &cut_path);
        assert!(largest <= cut.max(4096), "cut at {cut}: allocated {largest} bytes");
    }
}

#[test]
fn flipped_bytes_are_corrupt() {
    let dir = TempDir::new("flipped");
    let (path, bytes) = saved_simple(&dir);
    let bad = dir.path("bad.ckpt");
    // In the tensor data, in the step, in the metadata text and in the checksum itself.
    for at in [DATA_START + 5, bytes.len() - 20, 20, 61, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        fs::write(&bad, &b).unwrap();
        let e = load(&bad).expect_err("a damaged file must not load");
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "byte {at}: {e}");
        assert!(e.to_string().contains("checksum"), "byte {at}: {e}");
        assert_names_path(&e, &bad);
    }
    assert!(load(&path).is_ok(), "the original is intact");
}

#[test]
fn trailing_bytes_are_corrupt() {
    let dir = TempDir::new("trailing");
    let (_, mut b) = saved_simple(&dir);
    b.extend_from_slice(b"extra");
    let bad = dir.path("bad.ckpt");
    fs::write(&bad, &b).unwrap();
    let e = load(&bad).unwrap_err();
    assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
}

#[test]
fn foreign_files_are_not_checkpoints() {
    let dir = TempDir::new("foreign");
    let png: &[u8] = &[
        0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d, b'I', b'H', b'D', b'R',
    ];
    let cases: [(&str, &[u8]); 4] = [
        ("image.png", png),
        ("notes.txt", b"step = 100\nlr = 0.1\n"),
        ("short.txt", b"abc"),
        ("near-miss.bin", b"NABLACKX\x01\x00\x00\x00"),
    ];
    for (name, content) in cases {
        let path = dir.path(name);
        fs::write(&path, content).unwrap();
        let e = load(&path).unwrap_err();
        assert!(matches!(e, CheckpointError::NotACheckpoint { .. }), "{name}: {e}");
        assert_names_path(&e, &path);
        assert!(e.to_string().contains("not a nabla checkpoint"), "{e}");
    }
    // An empty file is a checkpoint cut off before its first byte.
    let empty = dir.path("empty.ckpt");
    fs::write(&empty, b"").unwrap();
    assert!(matches!(load(&empty), Err(CheckpointError::Truncated { .. })));
}

/// Files under /proc report a size of 0 but have content: the loader reads them to their end
/// and judges what it read (a text file, so not a checkpoint), not the reported size.
#[cfg(target_os = "linux")]
#[test]
fn files_that_report_size_zero_are_read_to_their_end() {
    let path = Path::new("/proc/version");
    let reported = fs::metadata(path).expect("/proc/version exists on Linux").len();
    assert_eq!(reported, 0, "this test needs a file whose reported size is 0");
    let e = load(path).unwrap_err();
    assert!(matches!(e, CheckpointError::NotACheckpoint { .. }), "{e}");
    assert_names_path(&e, path);
}

#[test]
fn newer_format_version_is_unsupported() {
    let dir = TempDir::new("version");
    let (_, mut b) = saved_simple(&dir);
    b[8..12].copy_from_slice(&99u32.to_le_bytes());
    let path = dir.path("v99.ckpt");
    fs::write(&path, &b).unwrap();
    let e = load(&path).unwrap_err();
    match &e {
        CheckpointError::UnsupportedVersion { found, supported, .. } => {
            assert_eq!((*found, *supported), (99, FORMAT_VERSION));
        }
        other => panic!("expected UnsupportedVersion, got {other}"),
    }
    assert!(e.to_string().contains("newer nabla"), "{e}");
    assert_names_path(&e, &path);
}

#[test]
fn huge_declared_lengths_error_without_allocating_them() {
    let dir = TempDir::new("huge");
    let (original, bytes) = saved_simple(&dir);
    // The tracker works: a good load allocates the file's bytes in one buffer.
    let (result, largest) = largest_allocation(|| load(&original));
    assert!(result.is_ok());
    assert!(largest >= bytes.len(), "tracked {largest} bytes");
    let path = dir.path("edited.ckpt");
    type Edit = fn(&mut [u8]);
    let cases: [(&str, Edit); 9] = [
        ("tensor byte length", |b| write_u64(b, AT_BYTE_LEN, 1 << 62)),
        ("tensor offset", |b| write_u64(b, AT_OFFSET, u64::MAX - 4)),
        ("one shape extent", |b| write_u64(b, AT_DIM1, 1 << 40)),
        ("shape product overflow", |b| {
            write_u64(b, AT_DIM0, 1 << 40);
            write_u64(b, AT_DIM1, 1 << 40);
        }),
        ("tensor count", |b| write_u64(b, AT_TENSOR_COUNT, u64::MAX / 2)),
        ("metadata count", |b| write_u64(b, AT_META_COUNT, 1 << 60)),
        ("metadata string length", |b| write_u64(b, AT_VALUE_LEN, 1 << 60)),
        ("data length", |b| write_u64(b, AT_DATA_LEN, 1 << 50)),
        ("header length", |b| write_u64(b, 12, u64::MAX)),
    ];
    for (what, edit) in cases {
        let mut b = bytes.clone();
        edit(&mut b);
        fix_checksum(&mut b);
        fs::write(&path, &b).unwrap();
        let (result, largest) = largest_allocation(|| load(&path));
        let e = result.expect_err(what);
        assert!(
            matches!(e, CheckpointError::Corrupt { .. } | CheckpointError::Truncated { .. }),
            "{what}: {e}"
        );
        assert_names_path(&e, &path);
        assert!(
            largest <= b.len(),
            "{what}: allocated {largest} bytes for a {}-byte file",
            b.len()
        );
    }
}

#[test]
fn inconsistent_table_entries_are_corrupt() {
    let dir = TempDir::new("table");
    let (_, bytes) = saved_simple(&dir);
    let path = dir.path("edited.ckpt");
    type Edit = fn(&mut [u8]);
    let cases: [(&str, Edit, &str); 4] = [
        ("unknown dtype tag", |b| b[AT_DTYPE] = 9, "dtype tag 9"),
        ("unknown section tag", |b| b[AT_SECTION] = 5, "section tag 5"),
        (
            "shape disagrees with byte length",
            |b| write_u64(b, AT_DIM0, 2),
            "claims",
        ),
        ("f64 dtype with f32 byte length", |b| b[AT_DTYPE] = 1, "claims"),
    ];
    for (what, edit, needle) in cases {
        let mut b = bytes.clone();
        edit(&mut b);
        fix_checksum(&mut b);
        fs::write(&path, &b).unwrap();
        let e = load(&path).expect_err(what);
        assert!(matches!(e, CheckpointError::Corrupt { .. }), "{what}: {e}");
        assert!(e.to_string().contains(needle), "{what}: {e}");
    }
}

#[test]
fn bool_bytes_other_than_zero_or_one_are_corrupt() {
    let dir = TempDir::new("bool");
    let path = dir.path("mask.ckpt");
    let ckpt = Checkpoint {
        params: vec![Tensor::from_vec(vec![true, false, true], &[3])],
        ..Default::default()
    };
    save(&path, &ckpt).unwrap();
    let mut b = fs::read(&path).unwrap();
    let data_start = 20 + read_u64(&b, 12) as usize;
    assert_eq!(&b[data_start..data_start + 3], &[1, 0, 1]);
    b[data_start + 1] = 2;
    fix_checksum(&mut b);
    fs::write(&path, &b).unwrap();
    let e = load(&path).unwrap_err();
    assert!(matches!(e, CheckpointError::Corrupt { .. }), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Atomic saving and I/O errors

#[test]
fn saving_over_a_checkpoint_replaces_it_and_leaves_no_temporary_files() {
    let dir = TempDir::new("replace");
    let path = dir.path("latest.ckpt");
    save(&path, &rich_checkpoint()).unwrap();
    let mut second = simple_checkpoint();
    second.step = 8;
    save(&path, &second).unwrap();
    assert_eq!(dir.entries(), vec!["latest.ckpt".to_string()]);
    let back = load(&path).unwrap();
    assert_eq!(back.step, 8);
    assert_eq!(back.params.len(), 1);
    assert_bit_equal(&back.params[0], &second.params[0], "params[0]");
}

#[test]
fn concurrent_saves_to_one_path_leave_one_valid_file() {
    let dir = TempDir::new("concurrent");
    let path = dir.path("shared.ckpt");
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let path = &path;
            s.spawn(move || {
                for i in 0..5u64 {
                    let mut c = simple_checkpoint();
                    c.step = t * 100 + i;
                    save(path, &c).unwrap();
                }
            });
        }
    });
    assert_eq!(dir.entries(), vec!["shared.ckpt".to_string()]);
    let back = load(&path).unwrap();
    assert!(back.step % 100 < 5 && back.step / 100 < 4);
}

#[test]
fn failed_save_leaves_no_partial_or_temporary_file() {
    let dir = TempDir::new("failed_save");
    // The target is a directory, so the final rename fails after the data was written.
    let target = dir.path("occupied");
    fs::create_dir(&target).unwrap();
    fs::write(target.join("inside"), b"x").unwrap();
    let e = save(&target, &simple_checkpoint()).unwrap_err();
    assert!(matches!(e, CheckpointError::Io { .. }), "{e}");
    assert_names_path(&e, &target);
    assert_eq!(dir.entries(), vec!["occupied".to_string()]);

    // A missing directory fails before anything is written.
    let nowhere = dir.path("missing-dir").join("ckpt.bin");
    let e = save(&nowhere, &simple_checkpoint()).unwrap_err();
    assert!(matches!(e, CheckpointError::Io { .. }), "{e}");
    assert_names_path(&e, &nowhere);
    assert_eq!(dir.entries(), vec!["occupied".to_string()]);
}

#[test]
fn io_errors_name_the_path() {
    let dir = TempDir::new("io_errors");
    let missing = dir.path("does-not-exist.ckpt");
    let e = load(&missing).unwrap_err();
    match &e {
        CheckpointError::Io { source, .. } => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("expected Io, got {other}"),
    }
    assert_names_path(&e, &missing);
    // A directory is not a checkpoint file.
    let e = load(&dir.0).unwrap_err();
    assert!(matches!(e, CheckpointError::Io { .. }), "{e}");
    assert_names_path(&e, &dir.0);
}
