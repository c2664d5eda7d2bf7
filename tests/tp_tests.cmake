# Tensor-parallel tests beyond the per-case tp.<case> tests (each case alone, in a world of one,
# where every tp group has size 1): the whole suite in one process (`tp`), and under mpirun with 2
# and 4 ranks (`tp_np2`, `tp_np4`), where the tp group is the world (and a dp × tp=2 grid's tp
# group in test_grid_subgroups). Included from the top-level CMakeLists.txt after
# tests/comm_tests.cmake, whose braid_mpi_suite() it uses.
braid_mpi_suite(tp test_tp 2 4)
