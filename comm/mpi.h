/* The MPI communicator behind a braid group, for libraries that take one (parallel HDF5 in
 * data/). Only for code that links MPI (braid_comm does); comm.h stays free of <mpi.h>. */
#ifndef BRAID_COMM_MPI_H
#define BRAID_COMM_MPI_H

#include <mpi.h>
#include <stdbool.h>

#include "comm/comm.h"

/* *out = c's MPI communicator (for the world, braid's duplicate of MPI_COMM_WORLD), which stays
 * owned by c: never free it. False, *out untouched, for a group without MPI (a world of one
 * started without a launcher, and its splits) or a NULL group. */
bool comm_mpi_handle(const struct comm *c, MPI_Comm *out);

#endif
