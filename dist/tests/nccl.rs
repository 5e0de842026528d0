//! NCCL as a group's device transport, on a GPU (`NABLA_GPU_CHECK=1`, as `ci/gpu-check` runs
//! it): a world of one, since NCCL refuses two ranks on one GPU and the GPU machines have one.
//! Says out loud when it skips.
#![cfg(feature = "nccl")]

use nabla_core::{DType, Device, Rng, Tensor};
use nabla_dist::{ProcessGroup, all_reduce_weighted, with_nccl};

#[test]
fn gradients_of_gpu_tensors_are_reduced_by_nccl_on_the_device() {
    if std::env::var_os("NABLA_GPU_CHECK").is_none() {
        println!(
            "SKIPPED gradients_of_gpu_tensors_are_reduced_by_nccl_on_the_device: no GPU here (set NABLA_GPU_CHECK=1 on a GPU machine)"
        );
        return;
    }
    let backend = nabla_cuda::init(0).expect("CUDA");
    let group = with_nccl(ProcessGroup::single(), &backend).expect("NCCL (set NABLA_NCCL_LIBRARY)");
    assert!(format!("{group:?}").contains("+ nccl on cuda:0"), "{group:?}");
    let mut rng = Rng::new(3);
    let host: Vec<Tensor> = [DType::F32, DType::F64, DType::BF16, DType::F16]
        .iter()
        .map(|&d| rng.normal(&[257, 3], 0.0, 1.0, DType::F64).cast(d))
        .collect();
    let gpu: Vec<Tensor> = host.iter().map(|t| t.to_device(Device::Cuda(0)).unwrap()).collect();
    let want = all_reduce_weighted(&ProcessGroup::single(), &host, 0.5).unwrap();
    let got = all_reduce_weighted(&group, &gpu, 0.5).unwrap();
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.device(), Device::Cuda(0));
        assert_eq!(g.dtype(), w.dtype());
        assert_eq!(
            g.to_host_buffer().to_le_bytes(),
            w.to_host_buffer().to_le_bytes(),
            "{}",
            w.dtype()
        );
    }
}
