//! With the `mpi` feature: compiles the one-function C shim that returns `MPI_IN_PLACE`
//! against the MPI library the `mpi` crate found. Without it: nothing.

fn main() {
    #[cfg(feature = "mpi")]
    {
        println!("cargo:rerun-if-changed=csrc/mpi_in_place.c");
        let lib = match build_probe_mpi::probe() {
            Ok(lib) => lib,
            Err(errs) => {
                for e in errs {
                    println!("cargo:warning=MPI probe: {e}");
                }
                panic!(
                    "nabla-dist: the `mpi` feature needs an MPI library (Debian: apt-get install \
                     libopenmpi-dev openmpi-bin libclang-dev)"
                );
            }
        };
        let mut build = cc::Build::new();
        build.file("csrc/mpi_in_place.c");
        match lib.mpicc {
            Some(mpicc) => {
                build.compiler(mpicc);
            }
            None => {
                for inc in &lib.include_paths {
                    build.include(inc);
                }
            }
        }
        build.compile("nabla_mpi_shim");
    }
}
