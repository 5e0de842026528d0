//! Dtype casts and device moves, with their (identity-like) derivative rules.

use crate::device::Device;
use crate::dtype::DType;
use crate::tensor::Tensor;
use crate::trace::Rule;

struct CastRule {
    from: DType,
    to: DType,
}

impl Rule for CastRule {
    fn name(&self) -> String {
        format!("cast({} -> {})", self.from, self.to)
    }
    fn vjp(&self, _i: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![self.from.is_float().then(|| ct.cast(self.from))]
    }
    fn jvp(&self, _i: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        if self.to.is_float() {
            Some(t[0].as_ref()?.cast(self.to))
        } else {
            None
        }
    }
}

/// The rule of [`Tensor::to_device`]: gradients move back to the source device.
pub(crate) struct ToDevice {
    pub from: Device,
    pub to: Device,
}

impl Rule for ToDevice {
    fn name(&self) -> String {
        format!("to_device({} -> {})", self.from, self.to)
    }
    fn vjp(&self, _i: &[Tensor], _o: &Tensor, ct: &Tensor) -> Vec<Option<Tensor>> {
        vec![Some(
            ct.to_device(self.from)
                .expect("the source device was usable for the forward pass"),
        )]
    }
    fn jvp(&self, _i: &[Tensor], _o: &Tensor, t: &[Option<Tensor>]) -> Option<Tensor> {
        Some(
            t[0].as_ref()?
                .to_device(self.to)
                .expect("the target device was usable for the forward pass"),
        )
    }
}

impl Tensor {
    /// The elements converted to `dtype` (floats to i64 truncate toward zero; non-zero is
    /// true). Gradients flow between float dtypes only.
    pub fn cast(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let raw = self.backend().cast(self.raw(), dtype);
        if self.dtype().is_float() && dtype.is_float() {
            Tensor::record(raw, &[self], || CastRule {
                from: self.dtype(),
                to: dtype,
            })
        } else {
            Tensor::untraced(raw, &[self])
        }
    }
}
