# Tensor-parallel tests beyond the per-case tp.<case> tests (each case alone, in a world of one,
# where every tp group has size 1): the whole suite in one process (`tp`), and under mpirun with 2
# and 4 ranks (`tp_np2`, `tp_np4`), where the tp group is the world (and a dp × tp=2 grid's tp
# group in test_grid_subgroups). Included from the top-level CMakeLists.txt after
# tests/comm_tests.cmake, whose braid_mpi_test() it uses.

# the whole suite in one process, as under MPI, but alone: a world of one without fork
add_test(NAME tp COMMAND test_tp)
set_tests_properties(tp PROPERTIES ENVIRONMENT "CK_FORK=no;OMP_NUM_THREADS=1"
                     FAIL_REGULAR_EXPRESSION "Checks: 0,")

# Check's fork mode and MPI do not mix: CK_FORK=no (test_tp also sets it when under MPI). A rank
# whose test failed aborts the job (test_guard_enter), and the watchdog ends a hang.
foreach(np 2 4)
  braid_mpi_test(tp_np${np} ${np} $<TARGET_FILE:test_tp>)
  set_property(TEST tp_np${np} APPEND PROPERTY ENVIRONMENT CK_FORK=no BRAID_COMM_TIMEOUT=60)
  set_property(TEST tp_np${np} APPEND PROPERTY FAIL_REGULAR_EXPRESSION "Checks: 0,")
endforeach()
