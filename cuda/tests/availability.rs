//! The availability check answers on every machine, GPU or not, and never panics.

#[test]
fn check_answers_without_panicking_and_names_what_is_missing() {
    match nabla_cuda::check() {
        Ok(info) => {
            assert!(info.devices >= 1 && info.names.len() == info.devices, "{info:?}");
            println!("CUDA available: {} device(s): {:?}", info.devices, info.names);
        }
        Err(e) => {
            let text = e.to_string();
            assert!(text.starts_with("CUDA is not available: "), "{text}");
            if let nabla_cuda::CudaUnavailable::Missing { library, looked_for } = &e {
                assert!(!looked_for.is_empty(), "no file names listed for {library:?}");
                assert!(
                    text.contains(&looked_for[0]) && text.contains("LD_LIBRARY_PATH"),
                    "{text}"
                );
            }
            println!("SKIPPED the device part: no CUDA here, as the check says: {text}");
        }
    }
}
