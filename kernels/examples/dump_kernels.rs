//! Writes every kernel of the catalogue as one CUDA C translation unit per file, plus an index,
//! for `ci/check_kernels` to compile with NVRTC.
//!
//! Usage: `cargo run -p nabla-kernels --example dump_kernels -- DIR`. Writes `DIR/ENTRY.cu` for
//! every entry point and `DIR/index.tsv` with one line per file: file name, entry point,
//! family, and the CUDA headers it includes (comma-separated, `-` for none).

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir] = args.as_slice() else {
        eprintln!("usage: dump_kernels DIR");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    if let Err(e) = fs::create_dir_all(&dir) {
        eprintln!("dump_kernels: cannot create {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut index = String::new();
    let specs = nabla_kernels::catalogue();
    for spec in &specs {
        let entry = spec.entry_name();
        let file = format!("{entry}.cu");
        if let Err(e) = fs::write(dir.join(&file), spec.source()) {
            eprintln!("dump_kernels: cannot write {}: {e}", dir.join(&file).display());
            return ExitCode::FAILURE;
        }
        let headers = spec.headers();
        let headers = if headers.is_empty() {
            "-".to_string()
        } else {
            headers.join(",")
        };
        index.push_str(&format!("{file}\t{entry}\t{}\t{headers}\n", spec.family()));
    }
    if let Err(e) = fs::write(dir.join("index.tsv"), index) {
        eprintln!("dump_kernels: cannot write the index: {e}");
        return ExitCode::FAILURE;
    }
    println!(
        "dump_kernels: wrote {} translation units to {}",
        specs.len(),
        dir.display()
    );
    ExitCode::SUCCESS
}
