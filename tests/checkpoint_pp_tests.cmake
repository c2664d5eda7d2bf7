# Checkpoints of pipeline-parallel runs (tests/test_checkpoint_pp.c) beyond the per-case
# checkpoint_pp.<case> tests (each case alone, in a world of one): the whole suite in one process
# (`checkpoint_pp`), and under mpirun with 2 and 4 ranks (`checkpoint_pp_np2`, `checkpoint_pp_np4`:
# the world as stage group, and 2 stages × dp with ZeRO-1). Included from the top-level
# CMakeLists.txt after tests/checkpoint_tp_tests.cmake, with braid_mpi_suite() from
# tests/comm_tests.cmake.
braid_mpi_suite(checkpoint_pp test_checkpoint_pp 2 4)
