//! The argument lists of the entry points. Each kernel's C signature is generated from its
//! [`Param`] list, so the list the backend reads is the signature the device sees.

use crate::dtype::KernelDType;

/// The C type of a reduction accumulator (the partial results between the two passes of a
/// split reduction).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccType {
    /// `float`
    F32,
    /// `double`
    F64,
    /// `int`
    I32,
    /// `unsigned int`
    U32,
    /// `long long`
    I64,
    /// `unsigned long long`
    U64,
}

impl AccType {
    /// The C type.
    pub fn c_type(self) -> &'static str {
        match self {
            AccType::F32 => "float",
            AccType::F64 => "double",
            AccType::I32 => "int",
            AccType::U32 => "unsigned int",
            AccType::I64 => "long long",
            AccType::U64 => "unsigned long long",
        }
    }

    /// Size of one accumulator in bytes.
    pub fn size_in_bytes(self) -> usize {
        match self {
            AccType::F32 | AccType::I32 | AccType::U32 => 4,
            AccType::F64 | AccType::I64 | AccType::U64 => 8,
        }
    }
}

/// The type of one kernel argument, in the order the kernel takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArgType {
    /// `const T* __restrict__`: a device buffer the kernel reads.
    In(KernelDType),
    /// `T* __restrict__`: a device buffer the kernel writes.
    Out(KernelDType),
    /// `T* __restrict__`: a device buffer the kernel reads and writes in place.
    InOut(KernelDType),
    /// `const Acc* __restrict__`: reduction partials the kernel reads.
    AccIn(AccType),
    /// `Acc* __restrict__`: reduction partials the kernel writes.
    AccOut(AccType),
    /// `NbLayout`: a [`crate::KernelLayout`] by value.
    Layout,
    /// `long long`
    I64,
    /// `int`
    I32,
    /// `double`
    F64,
    /// `unsigned long long*`: the device error record ([`crate::ERROR_RECORD_WORDS`] words), or
    /// null to skip reporting.
    ErrorRecord,
}

/// One argument of an entry point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Param {
    /// The C parameter name.
    pub name: &'static str,
    /// Its type.
    pub ty: ArgType,
}

impl Param {
    /// An argument called `name` of type `ty`.
    pub const fn new(name: &'static str, ty: ArgType) -> Param {
        Param { name, ty }
    }

    /// The C declaration (`const float* __restrict__ x`).
    pub fn c_decl(&self) -> String {
        let n = self.name;
        match self.ty {
            ArgType::In(d) => format!("const {}* __restrict__ {n}", d.c_type()),
            ArgType::Out(d) | ArgType::InOut(d) => format!("{}* __restrict__ {n}", d.c_type()),
            ArgType::AccIn(a) => format!("const {}* __restrict__ {n}", a.c_type()),
            ArgType::AccOut(a) => format!("{}* __restrict__ {n}", a.c_type()),
            ArgType::Layout => format!("const NbLayout {n}"),
            ArgType::I64 => format!("const long long {n}"),
            ArgType::I32 => format!("const int {n}"),
            ArgType::F64 => format!("const double {n}"),
            ArgType::ErrorRecord => format!("unsigned long long* {n}"),
        }
    }
}
