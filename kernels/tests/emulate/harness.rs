//! Builds the generated kernels with the host C++ compiler against `cuda_host.h` (an emulation of
//! the CUDA features they use) and runs them, so their results can be checked without a GPU.
//! One executable holds every kernel of the catalogue (their sources concatenate, which also
//! checks that property); each run is one process reading its arguments from stdin and writing
//! every buffer back to stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use nabla_kernels::{
    ArgType, AttentionPass, AttentionSpec, AttentionTuning, KernelDType, KernelLayout, KernelSpec, catalogue,
};

/// A kernel argument.
pub enum Arg {
    /// A device buffer with these bytes.
    Buf(Vec<u8>),
    /// A null pointer.
    Null,
    /// A value passed by value (scalar or layout).
    Pod(Vec<u8>),
}

impl Arg {
    pub fn layout(l: &KernelLayout) -> Arg {
        Arg::Pod(l.as_bytes().to_vec())
    }
    pub fn i64(v: i64) -> Arg {
        Arg::Pod(v.to_le_bytes().to_vec())
    }
    pub fn i32(v: i32) -> Arg {
        Arg::Pod(v.to_le_bytes().to_vec())
    }
    pub fn f64(v: f64) -> Arg {
        Arg::Pod(v.to_le_bytes().to_vec())
    }
    pub fn zeros(bytes: usize) -> Arg {
        Arg::Buf(vec![0; bytes])
    }
    /// A zeroed device error record.
    pub fn err() -> Arg {
        Arg::zeros(8 * nabla_kernels::ERROR_RECORD_WORDS)
    }
}

/// The error record read back from a buffer.
pub fn error_record(bytes: &[u8]) -> [u64; 4] {
    let mut r = [0u64; 4];
    for (k, w) in r.iter_mut().enumerate() {
        *w = u64::from_le_bytes(bytes[8 * k..8 * k + 8].try_into().unwrap());
    }
    r
}

fn cxx() -> Option<String> {
    let candidates = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["c++".to_string(), "g++".to_string()]);
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn c_arg(k: usize, ty: ArgType) -> String {
    match ty {
        ArgType::In(d) => format!("(const {}*)io.ptr({k})", d.c_type()),
        ArgType::Out(d) | ArgType::InOut(d) => format!("({}*)io.ptr({k})", d.c_type()),
        ArgType::AccIn(a) => format!("(const {}*)io.ptr({k})", a.c_type()),
        ArgType::AccOut(a) => format!("({}*)io.ptr({k})", a.c_type()),
        ArgType::Layout => format!("io.pod<NbLayout>({k})"),
        ArgType::I64 => format!("io.pod<long long>({k})"),
        ArgType::I32 => format!("io.pod<int>({k})"),
        ArgType::F64 => format!("io.pod<double>({k})"),
        ArgType::ErrorRecord => format!("(unsigned long long*)io.ptr({k})"),
    }
}

const DRIVER: &str = r#"
struct NbArg {
    unsigned char tag; // 0 buffer, 1 null, 2 by value
    std::vector<unsigned char> bytes;
};
struct NbIo {
    unsigned grid = 1, block = 32;
    std::vector<NbArg> args;
    void* ptr(size_t k) { return args[k].tag == 1 ? nullptr : args[k].bytes.data(); }
    template <class T>
    T pod(size_t k) {
        T v;
        std::memcpy(&v, args[k].bytes.data(), sizeof(T));
        return v;
    }
};
static void nb_read(void* p, size_t n) {
    if (n && std::fread(p, 1, n, stdin) != n) {
        std::fprintf(stderr, "emulator: short read\n");
        std::exit(3);
    }
}
struct NbRunner {
    const char* name;
    void (*run)(NbIo&);
};
"#;

/// The attention kernels spread over lanes in other ways than the default (not in the
/// catalogue: the backend launches them only when told to), for the f64 head classes up to
/// 128: the tunings the CUDA backend's tests compare with the CPU.
fn attention_tunings() -> Vec<KernelSpec> {
    let tunings = [(32, 1), (64, 1), (64, 2), (32, 4), (128, 2)];
    let mut out = Vec::new();
    for (lane_bytes, rows_per_group) in tunings {
        let tuning = AttentionTuning {
            lane_bytes,
            rows_per_group,
        };
        for pass in AttentionPass::ALL {
            for masked in [false, true] {
                for head in [32, 64, 128] {
                    let spec =
                        AttentionSpec::new(pass, KernelDType::F64, masked, head).and_then(|s| s.with_tuning(tuning));
                    out.extend(spec.ok().map(KernelSpec::from));
                }
            }
        }
    }
    out
}

/// The path of the emulator executable, built once; `None` (with a message) when no C++
/// compiler is found.
fn emulator() -> Option<&'static PathBuf> {
    static EXE: OnceLock<Option<PathBuf>> = OnceLock::new();
    EXE.get_or_init(|| {
        let Some(cxx) = cxx() else {
            eprintln!("emulate: SKIPPED: no C++ compiler (set CXX, or install g++ or clang++ (C++17))");
            return None;
        };
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("nabla-kernels-emulate");
        std::fs::create_dir_all(&dir).unwrap();
        // The header is pasted in, so that the rebuild check below sees its changes too.
        let mut src = String::from(include_str!("cuda_host.h"));
        let mut runners = String::new();
        let mut table = String::from("static const NbRunner nb_runners[] = {\n");
        for spec in catalogue().into_iter().chain(attention_tunings()) {
            let text = spec.source();
            for line in text.lines() {
                if !line.starts_with("#include <cuda_") {
                    src.push_str(line);
                    src.push('\n');
                }
            }
            let entry = spec.entry_name();
            let args: Vec<String> = spec.params().iter().enumerate().map(|(k, p)| c_arg(k, p.ty)).collect();
            runners.push_str(&format!(
                "static void run_{entry}(NbIo& io) {{\n    nb_launch(io.grid, io.block, [&] {{ {entry}({}); }});\n}}\n",
                args.join(", ")
            ));
            table.push_str(&format!("    {{\"{entry}\", run_{entry}}},\n"));
        }
        table.push_str("};\n");
        src.push_str(DRIVER);
        src.push_str(&runners);
        src.push_str(&table);
        src.push_str(
            r#"int main() {
    unsigned int len;
    nb_read(&len, 4);
    std::string name(len, '\0');
    nb_read(name.data(), len);
    NbIo io;
    unsigned int nargs;
    nb_read(&io.grid, 4);
    nb_read(&io.block, 4);
    nb_read(&nargs, 4);
    for (unsigned k = 0; k < nargs; ++k) {
        NbArg a;
        unsigned long long n;
        nb_read(&a.tag, 1);
        nb_read(&n, 8);
        a.bytes.resize(n);
        nb_read(a.bytes.data(), n);
        io.args.push_back(std::move(a));
    }
    for (const NbRunner& r : nb_runners) {
        if (name == r.name) {
            r.run(io);
            for (const NbArg& a : io.args) {
                if (a.tag == 0) {
                    unsigned long long n = a.bytes.size();
                    std::fwrite(&n, 8, 1, stdout);
                    std::fwrite(a.bytes.data(), 1, n, stdout);
                }
            }
            return 0;
        }
    }
    std::fprintf(stderr, "emulator: no kernel %s\n", name.c_str());
    return 4;
}
"#,
        );
        let cpp = dir.join("kernels.cpp");
        // Rebuild only when the generated program changes.
        let exe = dir.join("kernels");
        if std::fs::read_to_string(&cpp).ok().as_deref() == Some(src.as_str()) && exe.exists() {
            return Some(exe);
        }
        std::fs::write(&cpp, &src).unwrap();
        let out = Command::new(&cxx)
            .args(["-std=c++17", "-O0", "-w"])
            .arg(&cpp)
            .arg("-o")
            .arg(&exe)
            .output()
            .unwrap();
        if !out.status.success() {
            let _ = std::fs::remove_file(&cpp);
            panic!(
                "emulate: {cxx} could not build the kernels ({}):\n{}",
                cpp.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Some(exe)
    })
    .as_ref()
}

/// True when the emulator is available (else the tests return early, having said why).
pub fn available() -> bool {
    emulator().is_some()
}

/// Runs `spec` on `grid` blocks of `block` threads with `args` (checked against its params) and
/// returns every argument after the run: the bytes of each buffer, `None` for the others.
pub fn run(spec: &KernelSpec, grid: u32, block: u32, args: Vec<Arg>) -> Vec<Option<Vec<u8>>> {
    let exe = emulator().expect("check emulate::available() first");
    let params = spec.params();
    let entry = spec.entry_name();
    assert_eq!(params.len(), args.len(), "{entry}: argument count");
    let mut input = Vec::new();
    input.extend((entry.len() as u32).to_le_bytes());
    input.extend(entry.as_bytes());
    input.extend(grid.to_le_bytes());
    input.extend(block.to_le_bytes());
    input.extend((args.len() as u32).to_le_bytes());
    for (p, a) in params.iter().zip(&args) {
        let is_ptr = matches!(
            p.ty,
            ArgType::In(_)
                | ArgType::Out(_)
                | ArgType::InOut(_)
                | ArgType::AccIn(_)
                | ArgType::AccOut(_)
                | ArgType::ErrorRecord
        );
        let (tag, bytes): (u8, &[u8]) = match a {
            Arg::Buf(b) => (0, b),
            Arg::Null => (1, &[]),
            Arg::Pod(b) => (2, b),
        };
        assert_eq!(is_ptr, tag != 2, "{entry}: argument {} has the wrong kind", p.name);
        input.push(tag);
        input.extend((bytes.len() as u64).to_le_bytes());
        input.extend(bytes);
    }
    let mut child = Command::new(exe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{entry}: emulator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut at = 0;
    let data = out.stdout;
    args.iter()
        .map(|a| match a {
            Arg::Buf(_) => {
                let n = u64::from_le_bytes(data[at..at + 8].try_into().unwrap()) as usize;
                let b = data[at + 8..at + 8 + n].to_vec();
                at += 8 + n;
                Some(b)
            }
            _ => None,
        })
        .collect()
}
