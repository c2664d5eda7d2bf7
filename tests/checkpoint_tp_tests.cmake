# Checkpoints of tensor-parallel models (tests/test_checkpoint_tp.c) beyond the per-case
# checkpoint_tp.<case> tests (each case alone, in a world of one): the whole suite in one process
# (`checkpoint_tp`), and under mpirun with 2 and 4 ranks (`checkpoint_tp_np2`, `checkpoint_tp_np4`:
# tp = the world, every dp × tp grid of it with ZeRO-1). Included from the top-level CMakeLists.txt
# after tests/comm_tests.cmake, whose braid_mpi_suite() it uses (with its BRAID_MPI_TEST_ENV: no
# leak checking under mpirun when BRAID_SANITIZE is on).
braid_mpi_suite(checkpoint_tp test_checkpoint_tp 2 4)
