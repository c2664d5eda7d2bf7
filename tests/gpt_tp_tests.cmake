# Tensor parallelism inside the GPT model beyond the per-case gpt_tp.<case> tests (each case alone,
# in a world of one, where the tp group has size 1 and the model is the single-rank one): the whole
# suite in one process (`gpt_tp`), and under mpirun with 2 and 4 ranks (`gpt_tp_np2`,
# `gpt_tp_np4`), where the tp group is the world. Included from the top-level CMakeLists.txt
# after tests/comm_tests.cmake, whose braid_mpi_test() it uses.

# the whole suite in one process, as under MPI, but alone: a world of one without fork
add_test(NAME gpt_tp COMMAND test_gpt_tp)
set_tests_properties(gpt_tp PROPERTIES ENVIRONMENT "CK_FORK=no;OMP_NUM_THREADS=1"
                     FAIL_REGULAR_EXPRESSION "Checks: 0,")

# Check's fork mode and MPI do not mix: CK_FORK=no. A rank whose test failed aborts the job
# (tests/mpi_test.h), and the watchdog ends a hang.
foreach(np 2 4)
  braid_mpi_test(gpt_tp_np${np} ${np} $<TARGET_FILE:test_gpt_tp>)
  set_property(TEST gpt_tp_np${np} APPEND PROPERTY ENVIRONMENT CK_FORK=no BRAID_COMM_TIMEOUT=60)
  set_property(TEST gpt_tp_np${np} APPEND PROPERTY FAIL_REGULAR_EXPRESSION "Checks: 0,")
endforeach()
