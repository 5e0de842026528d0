//! NCCL through our own loader: the library test runs wherever libnccl can be opened (no GPU
//! needed; `ci/check_nccl` installs pip's NCCL and requires it with `NABLA_NCCL_REQUIRED=1`);
//! the communicator test needs a GPU (`NABLA_GPU_CHECK=1`, as `ci/gpu-check` runs it). Each says
//! out loud when it skips.

use nabla_core::{DType, Device, Tensor};
use nabla_cuda::nccl::{self, NcclComm};

fn nccl_or_skip(test: &str) -> Option<&'static nccl::NcclLibrary> {
    match nccl::library() {
        Ok(lib) => Some(lib),
        Err(e) if std::env::var_os("NABLA_NCCL_REQUIRED").is_some() => {
            panic!("NABLA_NCCL_REQUIRED is set but NCCL did not open: {e}")
        }
        Err(e) => {
            println!("SKIPPED {test}: {e}");
            None
        }
    }
}

#[test]
fn the_library_opens_by_its_own_name_reports_its_version_and_makes_ids() {
    let Some(lib) = nccl_or_skip("the_library_opens_by_its_own_name_reports_its_version_and_makes_ids") else {
        return;
    };
    println!("opened {} (NCCL {})", lib.name(), lib.version());
    let v = lib.version();
    assert_eq!(v.major, 2, "{lib:?}");
    assert!(v.minor >= 13, "nabla needs NCCL 2.13 or later, found {v}");
    // Ids are random per call and never all zeros.
    let a = lib.unique_id().expect("ncclGetUniqueId");
    let b = lib.unique_id().expect("ncclGetUniqueId");
    assert_ne!(a, b);
    assert!(a.0.iter().any(|&x| x != 0));
}

#[test]
fn a_world_of_one_reduces_and_broadcasts_device_tensors_in_place() {
    if std::env::var_os("NABLA_GPU_CHECK").is_none() {
        println!(
            "SKIPPED a_world_of_one_reduces_and_broadcasts_device_tensors_in_place: no GPU here (set NABLA_GPU_CHECK=1 on a GPU machine)"
        );
        return;
    }
    let lib = nccl::library().expect("NCCL must open on the GPU machine (NABLA_NCCL_LIBRARY)");
    let backend = nabla_cuda::init(0).expect("CUDA");
    let id = lib.unique_id().unwrap();
    let comm = NcclComm::init(lib, backend.api().clone(), &id, 0, 1).expect("ncclCommInitRank");
    let dev = Device::Cuda(0);
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16, DType::I64] {
        let host =
            Tensor::from_vec((0..1000).map(|i| (i % 37) as f64 - 18.0).collect::<Vec<f64>>(), &[1000]).cast(dtype);
        // A fresh buffer on the device (the product is a new allocation).
        let t = host.to_device(dev).unwrap() * 1.0;
        comm.all_reduce_sum(&t).unwrap();
        comm.join().unwrap();
        comm.broadcast(&t, 0).unwrap();
        comm.check().unwrap();
        assert_eq!(
            t.to_host_buffer().to_le_bytes(),
            host.to_host_buffer().to_le_bytes(),
            "{dtype}"
        );
    }
    // Two calls on one buffer before a join are ordered by the stream (the buffer the
    // communicator holds for the first does not count as another tensor's).
    let twice = Tensor::from_vec(vec![2.0f32; 8], &[8]).to_device(dev).unwrap() * 1.0;
    comm.all_reduce_sum(&twice).unwrap();
    comm.all_reduce_sum(&twice).unwrap();
    comm.join().unwrap();
    assert_eq!(twice.to_vec::<f32>(), vec![2.0; 8]);
    // What cannot be reduced in place is refused by name.
    let t = Tensor::from_vec(vec![1.0f32; 12], &[3, 4]).to_device(dev).unwrap() * 1.0;
    let e = comm.all_reduce_sum(&t.transpose()).unwrap_err().to_string();
    assert!(e.contains("strided view"), "{e}");
    let view = t.reshape([12]);
    let e = comm.all_reduce_sum(&view).unwrap_err().to_string();
    assert!(e.contains("shares its buffer"), "{e}");
    let b = Tensor::from_vec(vec![true, false], &[2]).to_device(dev).unwrap();
    let e = comm.all_reduce_sum(&b).unwrap_err().to_string();
    assert!(e.contains("cannot be summed by NCCL"), "{e}");
    let on_host = Tensor::from_vec(vec![1.0f32], &[1]);
    let e = comm.all_reduce_sum(&on_host).unwrap_err().to_string();
    assert!(e.contains("is not on this communicator's device"), "{e}");
    // After an abort the communicator refuses every call (NCCL freed it), and dropping it
    // does not destroy it a second time.
    comm.abort();
    comm.abort();
    let e = comm.check().unwrap_err().to_string();
    assert!(e.contains("was aborted"), "{e}");
    let fresh = Tensor::from_vec(vec![1.0f32; 4], &[4]).to_device(dev).unwrap() * 1.0;
    let e = comm.all_reduce_sum(&fresh).unwrap_err().to_string();
    assert!(e.contains("was aborted"), "{e}");
    drop(comm);
    assert_eq!(fresh.to_vec::<f32>(), vec![1.0; 4]);
}
