//! Errors of the generator (a kernel that does not exist, a layout that does not fit) and the
//! device error record that kernels fill instead of reading out of bounds.

use std::fmt;

use crate::dtype::KernelDType;

/// Why a kernel spec or a layout could not be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// The operation is not defined for the dtype (`exp` on i64, `and` on f32, atomics on u8).
    Unsupported {
        /// The kernel family and operation (`unary exp`, `scatter_add`).
        kernel: String,
        /// The dtype asked for.
        dtype: KernelDType,
        /// The dtypes this operation takes.
        accepted: &'static str,
    },
    /// A view that still has more than [`crate::MAX_DIMS`] axes after simplification.
    TooManyDims {
        /// The view's extents.
        shape: Vec<usize>,
        /// The view's strides.
        strides: Vec<isize>,
        /// Axes left after dropping extent-1 axes and merging neighbours.
        simplified: usize,
    },
    /// Inconsistent layout arguments (ranks that differ, an axis out of range).
    BadLayout(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Unsupported {
                kernel,
                dtype,
                accepted,
            } => write!(
                f,
                "nabla-kernels: there is no {kernel} kernel for {dtype}; it takes {accepted}"
            ),
            KernelError::TooManyDims {
                shape,
                strides,
                simplified,
            } => write!(
                f,
                "nabla-kernels: the view of shape {shape:?} with strides {strides:?} has {simplified} axes after merging, more than the {} a kernel layout holds; make it contiguous first",
                crate::MAX_DIMS
            ),
            KernelError::BadLayout(msg) => write!(f, "nabla-kernels: {msg}"),
        }
    }
}

impl std::error::Error for KernelError {}

/// Number of `u64` words of the device error record. Allocate one record per device (zeroed),
/// pass its address as every `err` argument, and read it where the host synchronises: word 0 is
/// the [`DeviceErrorKind`] code of the first error (0: none), word 1 the offending value, word 2
/// the extent it was checked against, word 3 the check site (the index check's `site`
/// argument, which the backend maps back to the op; 0 for other kernels). Zero it again after
/// reporting.
pub const ERROR_RECORD_WORDS: usize = 4;

/// The kinds of errors kernels report in the device error record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceErrorKind {
    /// `gather`: an index outside the accepted range; the element was written as zero.
    GatherIndex,
    /// `scatter_add`: an index outside the accepted range; the update was skipped.
    ScatterIndex,
    /// Integer division by zero; the element was written as zero.
    IntegerDivisionByZero,
    /// An integer raised to a negative power; the element was written as zero.
    NegativeIntegerExponent,
    /// `cross_entropy`: a label outside `0..classes`; the row's loss and gradient are NaN.
    LabelOutOfRange,
    /// The index check: an index outside the accepted range (word 3 names the site); it was
    /// written as zero.
    IndexOutOfRange,
}

impl DeviceErrorKind {
    /// Every kind, in code order.
    pub const ALL: [DeviceErrorKind; 6] = [
        DeviceErrorKind::GatherIndex,
        DeviceErrorKind::ScatterIndex,
        DeviceErrorKind::IntegerDivisionByZero,
        DeviceErrorKind::NegativeIntegerExponent,
        DeviceErrorKind::LabelOutOfRange,
        DeviceErrorKind::IndexOutOfRange,
    ];

    /// The code written to word 0 of the record (never 0).
    pub fn code(self) -> u64 {
        match self {
            DeviceErrorKind::GatherIndex => 1,
            DeviceErrorKind::ScatterIndex => 2,
            DeviceErrorKind::IntegerDivisionByZero => 3,
            DeviceErrorKind::NegativeIntegerExponent => 4,
            DeviceErrorKind::LabelOutOfRange => 5,
            DeviceErrorKind::IndexOutOfRange => 6,
        }
    }

    /// The C macro name of the code in the generated source.
    pub(crate) fn macro_name(self) -> &'static str {
        match self {
            DeviceErrorKind::GatherIndex => "NB_ERR_GATHER_INDEX",
            DeviceErrorKind::ScatterIndex => "NB_ERR_SCATTER_INDEX",
            DeviceErrorKind::IntegerDivisionByZero => "NB_ERR_INT_DIV_ZERO",
            DeviceErrorKind::NegativeIntegerExponent => "NB_ERR_INT_NEG_POW",
            DeviceErrorKind::LabelOutOfRange => "NB_ERR_LABEL",
            DeviceErrorKind::IndexOutOfRange => "NB_ERR_INDEX",
        }
    }
}

/// The first error a kernel reported since the record was last cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceError {
    /// What went wrong.
    pub kind: DeviceErrorKind,
    /// The offending index, label, dividend or exponent.
    pub value: i64,
    /// The extent the index was checked against (0 when not an index).
    pub extent: i64,
    /// The check site of an [`DeviceErrorKind::IndexOutOfRange`] (0 otherwise).
    pub site: u64,
}

impl DeviceError {
    /// Decodes a device error record read back from the device: `Ok(None)` when no error was
    /// reported, `Err(code)` for a code this crate does not know.
    pub fn decode(record: &[u64; ERROR_RECORD_WORDS]) -> Result<Option<DeviceError>, u64> {
        if record[0] == 0 {
            return Ok(None);
        }
        let kind = DeviceErrorKind::ALL
            .into_iter()
            .find(|k| k.code() == record[0])
            .ok_or(record[0])?;
        Ok(Some(DeviceError {
            kind,
            value: record[1] as i64,
            extent: record[2] as i64,
            site: record[3],
        }))
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (v, n) = (self.value, self.extent);
        match self.kind {
            DeviceErrorKind::GatherIndex => write!(f, "take: index {v} is out of range for an axis of extent {n}"),
            DeviceErrorKind::ScatterIndex => {
                write!(f, "scatter_add: index {v} is out of range for an axis of extent {n}")
            }
            DeviceErrorKind::IntegerDivisionByZero => write!(
                f,
                "div: integer division by zero ({v} / 0); cast to a float dtype for IEEE semantics"
            ),
            DeviceErrorKind::NegativeIntegerExponent => write!(
                f,
                "pow: integer base to the negative power {v}; cast to a float dtype first"
            ),
            DeviceErrorKind::LabelOutOfRange => write!(
                f,
                "cross_entropy: label {v} is out of range for {n} classes (accepted: 0 ..= {})",
                n - 1
            ),
            DeviceErrorKind::IndexOutOfRange => write!(f, "index {v} is out of range for an axis of extent {n}"),
        }
    }
}

impl std::error::Error for DeviceError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_decode() {
        assert_eq!(DeviceError::decode(&[0, 0, 0, 0]), Ok(None));
        let e = DeviceError::decode(&[1, (-7i64) as u64, 5, 0]).unwrap().unwrap();
        assert_eq!(e.kind, DeviceErrorKind::GatherIndex);
        assert_eq!(e.to_string(), "take: index -7 is out of range for an axis of extent 5");
        assert_eq!(DeviceError::decode(&[99, 0, 0, 0]), Err(99));
        let codes: Vec<u64> = DeviceErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes, [1, 2, 3, 4, 5, 6]);
        let e = DeviceError::decode(&[6, 9, 4, 17]).unwrap().unwrap();
        assert_eq!((e.kind, e.site), (DeviceErrorKind::IndexOutOfRange, 17));
    }
}
