/* MPI_IN_PLACE is a macro whose value differs between MPI implementations (Open MPI and
   MPICH use different sentinels), so Rust cannot name it portably: this one function
   returns it, compiled against the same mpi.h the mpi crate uses. */
#include <mpi.h>

void *nabla_mpi_in_place(void) { return MPI_IN_PLACE; }
