//! The checks of `train_mlp` that need more than the flags' own values (the number of ranks,
//! the training set's size, the file system) and the guard against a loss or parameters that
//! stop being finite. The first kind runs after `nb::dist::init`, before any collective.

use std::fs::{self, OpenOptions};
use std::path::Path;

use nabla::{DType, Tensor};

/// Why the run cannot start, and whether every rank necessarily finds the same.
#[derive(Debug)]
pub struct SetupError {
    /// What is wrong and what to do, naming the flag.
    pub message: String,
    /// True when the check depends only on the flags, the data and the number of ranks; false
    /// when it depends on the rank's own file system (so the other ranks may not stop by
    /// themselves).
    pub same_on_every_rank: bool,
}

impl SetupError {
    /// An error every rank finds (flags, data size, number of ranks).
    pub fn everywhere(message: String) -> SetupError {
        SetupError {
            message,
            same_on_every_rank: true,
        }
    }

    /// An error about this rank's files.
    pub fn on_this_rank(message: String) -> SetupError {
        SetupError {
            message,
            same_on_every_rank: false,
        }
    }
}

/// Checks that batches of `batch_size` (the global batch) from `train_len` examples give each
/// of `world` ranks at least one example, the last, smaller batch of an epoch included.
pub fn check_batches(batch_size: usize, train_len: usize, world: usize) -> Result<(), String> {
    if batch_size < world {
        return Err(format!(
            "--batch-size {batch_size}: the global batch must give each of the {world} ranks at least one \
             example; use a batch size of at least {world}"
        ));
    }
    let last = train_len % batch_size;
    if last != 0 && last < world {
        return Err(format!(
            "--batch-size {batch_size}: the last batch of each epoch has {last} examples ({train_len} % \
             {batch_size}), fewer than the {world} ranks; choose a batch size whose last batch has at \
             least {world} examples (or divides {train_len})"
        ));
    }
    Ok(())
}

/// Checks that a checkpoint can be saved at `path`: it is not a directory, and its directory
/// exists and accepts new files (probed by creating and removing one, as the atomic save
/// creates a temporary file there and renames it).
pub fn check_checkpoint_path(path: &Path) -> Result<(), String> {
    let shown = path.display();
    if path.is_dir() {
        return Err(format!(
            "--checkpoint {shown}: is a directory; give the path of a file, such as {}",
            path.join("ckpt.bin").display()
        ));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "--checkpoint {shown}: the directory {} does not exist; create it first (mkdir -p {}) or \
             choose an existing, writable directory",
            dir.display(),
            dir.display()
        ));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let probe = dir.join(format!(".{name}.write-check-{}", std::process::id()));
    match OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(format!(
            "--checkpoint {shown}: cannot create files in the directory {} ({e}); choose a writable directory",
            dir.display()
        )),
    }
}

/// The index of the first leaf holding a NaN or an infinity, if any.
pub fn first_non_finite(leaves: &[Tensor]) -> Option<usize> {
    leaves
        .iter()
        .position(|t| t.dtype().is_float() && t.cast(DType::F64).to_vec::<f64>().iter().any(|v| !v.is_finite()))
}
