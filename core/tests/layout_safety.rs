//! Safe code cannot make a tensor that reads outside its buffer: `RawTensor::new` proves that
//! the smallest and largest index a layout reaches lie inside the buffer, and the fields that
//! could bypass it are private to the crate.

use std::sync::Arc;

use nabla_core::Tensor;
use nabla_core::layout::Layout;
use nabla_core::storage::{CpuBuffer, RawTensor, Storage};

fn four() -> Storage {
    Storage::Cpu(CpuBuffer::F32(Arc::new(vec![1.0, 2.0, 3.0, 4.0])))
}

#[test]
fn layouts_that_leave_the_buffer_are_refused_with_the_reach_named() {
    // The case from the user trial: a [2, 2] view with strides [1, 1000] over 4 floats.
    let e = RawTensor::new(four(), Layout::new(&[2, 2], &[1, 1000], 0))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("reaches indices 0..=1001, outside a buffer of 4 elements"),
        "{e}"
    );
    // A negative stride that walks below index 0.
    let e = RawTensor::new(four(), Layout::new(&[3], &[-1], 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("indices -1..=1"), "{e}");
    // An offset past the end; one element too many; a huge extent that would overflow isize.
    assert!(RawTensor::new(four(), Layout::new(&[1], &[1], 4)).is_err());
    assert!(RawTensor::new(four(), Layout::new(&[5], &[1], 0)).is_err());
    assert!(RawTensor::new(four(), Layout::new(&[usize::MAX / 2, 3], &[isize::MAX / 2, 1], 0)).is_err());
    // Reaches that overflow i128 when added up, and element counts that overflow usize: a
    // wrapping sum would make these look small.
    assert!(
        RawTensor::new(
            four(),
            Layout::new(&[usize::MAX, usize::MAX], &[isize::MAX, isize::MAX], 0)
        )
        .is_err()
    );
    assert!(
        RawTensor::new(
            four(),
            Layout::new(&[usize::MAX, usize::MAX], &[isize::MIN, isize::MIN], 0)
        )
        .is_err()
    );
    assert!(RawTensor::new(four(), Layout::new(&[usize::MAX / 2, 4], &[0, 0], 0)).is_err());
    // An empty view may sit at the end, not beyond it.
    assert!(RawTensor::new(four(), Layout::new(&[0, 3], &[3, 1], 4)).is_ok());
    assert!(RawTensor::new(four(), Layout::new(&[0], &[1], 5)).is_err());
}

#[test]
fn layouts_inside_the_buffer_work_and_read_the_right_elements() {
    // Transposed, broadcast (stride 0) and reversed views, all inside 4 elements.
    let t = Tensor::from_raw(RawTensor::new(four(), Layout::new(&[2, 2], &[1, 2], 0)).unwrap());
    assert_eq!(t.to_vec::<f32>(), vec![1.0, 3.0, 2.0, 4.0]);
    let t = Tensor::from_raw(RawTensor::new(four(), Layout::new(&[3, 2], &[0, 1], 2)).unwrap());
    assert_eq!(t.to_vec::<f32>(), vec![3.0, 4.0, 3.0, 4.0, 3.0, 4.0]);
    let t = Tensor::from_raw(RawTensor::new(four(), Layout::new(&[4], &[-1], 3)).unwrap());
    assert_eq!(t.to_vec::<f32>(), vec![4.0, 3.0, 2.0, 1.0]);
    assert_eq!(t.matmul(&t).item::<f32>(), 30.0);
}

#[test]
fn from_cpu_checks_the_length() {
    let err =
        std::panic::catch_unwind(|| RawTensor::from_cpu(CpuBuffer::F32(Arc::new(vec![1.0; 3])), &[2, 2])).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("shape [2, 2] needs 4 elements, the buffer has 3"), "{msg}");
}

#[test]
fn views_made_by_ops_stay_inside_and_are_readable() {
    // Every view op on a strided tensor; reading each must give NumPy's values.
    let x = Tensor::from_vec((0..24).map(|v| v as f32).collect::<Vec<_>>(), &[2, 3, 4]);
    let v = x.transpose().slice_axis(0, Some(3), None, -2).flip(1);
    assert_eq!(v.shape(), &[2, 3, 2]);
    assert_eq!(
        v.to_vec::<f32>(),
        vec![11.0, 23.0, 7.0, 19.0, 3.0, 15.0, 9.0, 21.0, 5.0, 17.0, 1.0, 13.0]
    );
    assert!(v.raw().layout().fits(v.raw().storage().len()));
}
