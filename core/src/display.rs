//! NumPy-like printing: `[[1. 2.]\n [3. 4.]]`, long tensors summarised with `...`.

use std::fmt;

use crate::dtype::DType;
use crate::tensor::Tensor;

const SUMMARY_THRESHOLD: usize = 1000;
const EDGE: usize = 3;

/// Fixed-point or scientific cells, each with at most 8 fractional digits and no more than the
/// shortest representation that round-trips at the tensor's precision (`single`: f32).
fn format_floats(values: &[f64], single: bool) -> Vec<String> {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    let max = finite.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let min_nonzero = finite
        .iter()
        .filter(|v| **v != 0.0)
        .fold(f64::INFINITY, |m, v| m.min(v.abs()));
    let scientific = max >= 1e8 || (min_nonzero < 1e-4 && min_nonzero.is_finite());
    values
        .iter()
        .map(|&v| {
            if v.is_nan() {
                "nan".into()
            } else if v.is_infinite() {
                if v > 0.0 { "inf".into() } else { "-inf".into() }
            } else if scientific {
                format!("{v:.8e}")
            } else {
                let shortest = if single {
                    format!("{}", v as f32)
                } else {
                    format!("{v}")
                };
                let fraction = shortest.split_once('.').map_or(0, |(_, f)| f.len());
                if fraction > 8 {
                    format!("{v:.8}").trim_end_matches('0').to_string()
                } else if fraction == 0 {
                    format!("{shortest}.")
                } else {
                    shortest
                }
            }
        })
        .collect()
}

/// Pads fixed-point cells so that their decimal points line up (NumPy's layout).
fn align_decimal_points(cells: Vec<String>) -> Vec<String> {
    let split = |c: &str| match c.find('.') {
        Some(i) if !c.contains('e') => (c[..i].len(), c.len() - i),
        _ => (c.len(), 0),
    };
    let frac = cells.iter().map(|c| split(c).1).max().unwrap_or(0);
    cells
        .into_iter()
        .map(|c| {
            let pad = frac - split(&c).1;
            format!("{c}{}", " ".repeat(pad))
        })
        .collect()
}

fn render(shape: &[usize], cells: &[String], width: usize, depth: usize, summarise: bool, out: &mut String) {
    if shape.is_empty() {
        out.push_str(&format!("{:>width$}", cells[0]));
        return;
    }
    let n = shape[0];
    let inner: usize = shape[1..].iter().product();
    out.push('[');
    let indices: Vec<Option<usize>> = if summarise && n > 2 * EDGE {
        (0..EDGE)
            .map(Some)
            .chain(std::iter::once(None))
            .chain((n - EDGE..n).map(Some))
            .collect()
    } else {
        (0..n).map(Some).collect()
    };
    for (k, i) in indices.iter().enumerate() {
        if k > 0 {
            if shape.len() == 1 {
                out.push(' ');
            } else {
                out.push_str(&"\n".repeat(shape.len() - 1));
                out.push_str(&" ".repeat(depth + 1));
            }
        }
        match i {
            None => out.push_str("..."),
            Some(i) => render(
                &shape[1..],
                &cells[i * inner..(i + 1) * inner],
                width,
                depth + 1,
                summarise,
                out,
            ),
        }
    }
    out.push(']');
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_batched() {
            return write!(
                f,
                "<batched inside vmap: {}{:?} per example>",
                self.dtype(),
                self.shape()
            );
        }
        let cells: Vec<String> = match self.dtype() {
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
                align_decimal_points(format_floats(&self.to_vec::<f64>(), self.dtype() != DType::F64))
            }
            DType::I64 => self.to_vec::<i64>().iter().map(|v| v.to_string()).collect(),
            DType::Bool => self
                .to_vec::<bool>()
                .iter()
                .map(|&v| if v { "True".into() } else { "False".into() })
                .collect(),
        };
        let width = cells.iter().map(|c| c.len()).max().unwrap_or(0);
        let mut s = String::new();
        render(self.shape(), &cells, width, 0, self.numel() > SUMMARY_THRESHOLD, &mut s);
        f.write_str(&s)
    }
}
