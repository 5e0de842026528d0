//! Data: the embedded digits set, a reader for MNIST IDX files, seeded splits and shuffled
//! batches, and the sharding helper that gives rank `r` of `n` its slice of a global batch.

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use nabla_core::{DType, Rng, Tensor};

/// The digits set (UCI, CC BY 4.0; see `data/README.md`), gzip-compressed CSV.
const DIGITS_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Errors reading data files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not in the expected format.
    #[error("{path}: {detail}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

/// Examples `x: [n, features]` (f32) with integer labels `y: [n]` (i64).
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Features, one row per example.
    pub x: Tensor,
    /// Class labels.
    pub y: Tensor,
}

/// One batch of a [`Dataset`].
#[derive(Clone, Debug)]
pub struct Batch {
    /// Features.
    pub x: Tensor,
    /// Labels.
    pub y: Tensor,
}

/// The rows of a global batch of `n` examples that rank `rank` of `world` takes: contiguous,
/// sizes differing by at most one, covering `0..n` exactly once over all ranks.
pub fn shard_range(n: usize, rank: usize, world: usize) -> Range<usize> {
    if world == 0 || rank >= world {
        panic!("shard_range: rank {rank} is not in a world of {world}");
    }
    let base = n / world;
    let extra = n % world;
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

impl Batch {
    /// This rank's slice of the batch (see [`shard_range`]).
    pub fn shard(&self, rank: usize, world: usize) -> Batch {
        let r = shard_range(self.y.numel(), rank, world);
        let (s, e) = (Some(r.start as isize), Some(r.end as isize));
        Batch {
            x: self.x.slice_axis(0, s, e, 1),
            y: self.y.slice_axis(0, s, e, 1),
        }
    }
}

impl Dataset {
    /// The 1797 8x8 digits embedded in the crate, pixels scaled to `[0, 1]`.
    pub fn digits() -> Dataset {
        let mut text = String::new();
        flate2::read::GzDecoder::new(DIGITS_GZ)
            .read_to_string(&mut text)
            .expect("the embedded digits data is valid gzip");
        let mut x = Vec::with_capacity(1797 * 64);
        let mut y = Vec::with_capacity(1797);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let values: Vec<f32> = line
                .split(',')
                .map(|v| v.trim().parse().expect("embedded digits are numbers"))
                .collect();
            assert_eq!(values.len(), 65, "embedded digits rows have 65 values");
            x.extend(values[..64].iter().map(|v| v / 16.0));
            y.push(values[64] as i64);
        }
        let n = y.len();
        Dataset {
            x: Tensor::from_vec(x, &[n, 64]),
            y: Tensor::from_vec(y, &[n]),
        }
    }

    /// Reads MNIST from a directory holding `train-images-idx3-ubyte`,
    /// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`
    /// (pixels scaled to `[0, 1]`, images flattened): `(train, test)`.
    pub fn mnist(dir: &Path) -> Result<(Dataset, Dataset), DataError> {
        let load = |images: &str, labels: &str| -> Result<Dataset, DataError> {
            let (idims, ibytes) = read_idx(&dir.join(images))?;
            let (ldims, lbytes) = read_idx(&dir.join(labels))?;
            if idims.is_empty() || ldims.len() != 1 || idims[0] != ldims[0] {
                return Err(DataError::Format {
                    path: dir.join(labels),
                    detail: format!(
                        "{} labels for images of dimensions {idims:?}",
                        ldims.first().copied().unwrap_or(0)
                    ),
                });
            }
            let n = idims[0];
            let features = idims[1..].iter().product::<usize>();
            let x: Vec<f32> = ibytes.iter().map(|&b| b as f32 / 255.0).collect();
            let y: Vec<i64> = lbytes.iter().map(|&b| b as i64).collect();
            Ok(Dataset {
                x: Tensor::from_vec(x, &[n, features]),
                y: Tensor::from_vec(y, &[n]),
            })
        };
        Ok((
            load("train-images-idx3-ubyte", "train-labels-idx1-ubyte")?,
            load("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")?,
        ))
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.y.numel()
    }

    /// True when there is no example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `indices`, in that order.
    pub fn subset(&self, indices: &[i64]) -> Dataset {
        let idx = Tensor::from_vec(indices.to_vec(), &[indices.len()]);
        Dataset {
            x: self.x.take(&idx, 0),
            y: self.y.take(&idx, 0),
        }
    }

    /// A seeded random split: `(train, test)` with `test_fraction` of the examples in test.
    pub fn split(&self, test_fraction: f64, seed: u64) -> (Dataset, Dataset) {
        if !(0.0..1.0).contains(&test_fraction) {
            panic!("split: test_fraction must be in [0, 1), got {test_fraction}");
        }
        let perm = Rng::new(seed).permutation(self.len()).to_vec::<i64>();
        let n_test = (self.len() as f64 * test_fraction).round() as usize;
        (self.subset(&perm[n_test..]), self.subset(&perm[..n_test]))
    }

    /// The batches of epoch `epoch`, shuffled by a permutation that depends only on `(seed,
    /// epoch)` (so a resumed run sees the same batches); the last short batch is kept.
    pub fn batches(&self, batch_size: usize, seed: u64, epoch: u64) -> Vec<Batch> {
        if batch_size == 0 {
            panic!("batches: batch_size must be positive");
        }
        let perm = Rng::from_state(seed, epoch.wrapping_mul(0x9E37_79B9).wrapping_add(1)).permutation(self.len());
        let shuffled = Dataset {
            x: self.x.take(&perm, 0),
            y: self.y.take(&perm, 0),
        };
        (0..self.len())
            .step_by(batch_size)
            .map(|s| {
                let e = (s + batch_size).min(self.len());
                let (s, e) = (Some(s as isize), Some(e as isize));
                Batch {
                    x: shuffled.x.slice_axis(0, s, e, 1),
                    y: shuffled.y.slice_axis(0, s, e, 1),
                }
            })
            .collect()
    }

    /// The features cast to `dtype`.
    pub fn with_dtype(&self, dtype: DType) -> Dataset {
        Dataset {
            x: self.x.cast(dtype),
            y: self.y.clone(),
        }
    }
}

/// Reads an IDX file (unsigned-byte data): its dimensions and bytes. Sizes are checked against
/// the file length before anything is allocated.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let bytes = std::fs::read(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |detail: String| DataError::Format {
        path: path.to_path_buf(),
        detail,
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(
            "not an IDX file (the magic number must start with two zero bytes)".into()
        ));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "IDX element type 0x{:02x} is not supported (only unsigned bytes, 0x08)",
            bytes[2]
        )));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated header: {ndims} dimensions need {header} bytes, the file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(format!("dimensions {dims:?} overflow")))?;
    if bytes.len() - header != count {
        return Err(bad(format!(
            "dimensions {dims:?} need {count} data bytes, the file has {}",
            bytes.len() - header
        )));
    }
    Ok((dims, bytes[header..].to_vec()))
}
