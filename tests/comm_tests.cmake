# Communicator tests beyond the per-case comm.<case> tests (each case alone, in a world of one):
# the whole suite in one process without fork (`comm`), under mpirun with 2, 3 and 4 ranks, the
# watchdog, and a malformed BRAID_COMM_TIMEOUT. Also braid_mpi_test() for every multi-rank test.
# Included from the top-level CMakeLists.txt inside if(CHECK_FOUND), after find_package(MPI).

# mpirun and the flag that lets it start more ranks than there are cores (Open MPI needs it;
# MPICH's mpiexec oversubscribes unasked and knows no such flag)
set(BRAID_MPIEXEC ${MPIEXEC_EXECUTABLE})
execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE mpiexec_version
                ERROR_QUIET)
if(mpiexec_version MATCHES "Open MPI|OpenRTE")
  list(APPEND BRAID_MPIEXEC --oversubscribe)
endif()
# the environment of every multi-rank test: Open MPI refuses root without the first two; one
# OpenMP thread per rank keeps oversubscribed ranks from fighting over cores; Open MPI's own
# allocations look like leaks to LeakSanitizer, so leak checking is off under mpirun (ASan's
# other checks stay on)
set(BRAID_MPI_TEST_ENV OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1)
if(BRAID_SANITIZE)
  list(APPEND BRAID_MPI_TEST_ENV ASAN_OPTIONS=detect_leaks=0)
endif()

# braid_mpi_test(<name> <np> <command> [<arg>...]): a CTest test running the command under
# `mpirun -np <np> --oversubscribe` with BRAID_MPI_TEST_ENV and a 300 s TIMEOUT. Add variables
# with set_property(TEST <name> APPEND PROPERTY ENVIRONMENT "NAME=value"); change the limit with
# set_tests_properties(<name> PROPERTIES TIMEOUT <seconds>).
function(braid_mpi_test name np)
  add_test(NAME ${name} COMMAND ${BRAID_MPIEXEC} ${MPIEXEC_NUMPROC_FLAG} ${np} ${MPIEXEC_PREFLAGS}
                                ${ARGN})
  set_tests_properties(${name} PROPERTIES ENVIRONMENT "${BRAID_MPI_TEST_ENV}" TIMEOUT 300)
endfunction()

# braid_mpi_suite(<name> <target> <np>...): a Check suite built with tests/mpi_test.h, run whole
# in one process alone (test <name>: a world of one, without fork) and under mpirun with each <np>
# (tests <name>_np<np>). Check's fork mode and MPI do not mix: CK_FORK=no. A rank whose test
# failed aborts the job (tests/mpi_test.h), and the watchdog ends a hang. "Checks: 0," fails a run
# that ran nothing.
function(braid_mpi_suite name target)
  add_test(NAME ${name} COMMAND ${target})
  set_tests_properties(${name} PROPERTIES ENVIRONMENT "CK_FORK=no;OMP_NUM_THREADS=1"
                       FAIL_REGULAR_EXPRESSION "Checks: 0,")
  foreach(np ${ARGN})
    braid_mpi_test(${name}_np${np} ${np} $<TARGET_FILE:${target}>)
    set_property(TEST ${name}_np${np} APPEND PROPERTY ENVIRONMENT CK_FORK=no BRAID_COMM_TIMEOUT=60)
    set_property(TEST ${name}_np${np} APPEND PROPERTY FAIL_REGULAR_EXPRESSION "Checks: 0,")
  endforeach()
endfunction()

# the whole suite in one process, as under MPI, but alone: a world of one without fork
add_test(NAME comm COMMAND test_comm)
set_tests_properties(comm PROPERTIES ENVIRONMENT "CK_FORK=no;OMP_NUM_THREADS=1"
                     FAIL_REGULAR_EXPRESSION "Checks: 0,")

# Check's fork mode and MPI do not mix: CK_FORK=no (test_comm also sets it when under MPI). A
# rank whose test failed aborts the job (see test_guard_enter), and the watchdog ends a hang.
foreach(np 2 3 4)
  braid_mpi_test(comm_np${np} ${np} $<TARGET_FILE:test_comm>)
  set_property(TEST comm_np${np} APPEND PROPERTY ENVIRONMENT CK_FORK=no BRAID_COMM_TIMEOUT=60)
  set_property(TEST comm_np${np} APPEND PROPERTY FAIL_REGULAR_EXPRESSION "Checks: 0,")
endforeach()

# The watchdog: rank 1 sleeps 30 s instead of joining rank 0's allreduce. With
# BRAID_COMM_TIMEOUT=2 the job must end within 10 s, non-zero, with rank 0's message naming
# itself, the operation and the group.
set(BRAID_COMM_WATCHDOG_CHECK [=[
start=$(date +%s)
out=$("$@" 2>&1)
status=$?
elapsed=$(( $(date +%s) - start ))
printf '%s\n' "$out"
expected='braid: error: rank 0: allreduce on group world did not complete in 2 s (a peer is stuck or dead)'
if [ "$status" -eq 0 ]; then echo "FAIL: the job exited with status 0"; exit 1; fi
if [ "$elapsed" -gt 10 ]; then echo "FAIL: the job took $elapsed s"; exit 1; fi
case "$out" in
  *"$expected"*) ;;
  *) echo "FAIL: no line: $expected"; exit 1 ;;
esac
echo "watchdog ended the job with status $status after $elapsed s"
]=])
add_test(NAME comm_watchdog
         COMMAND bash -c "${BRAID_COMM_WATCHDOG_CHECK}" comm_watchdog ${BRAID_MPIEXEC}
                 ${MPIEXEC_NUMPROC_FLAG} 2 ${MPIEXEC_PREFLAGS} $<TARGET_FILE:test_comm>)
set_tests_properties(comm_watchdog PROPERTIES ENVIRONMENT "${BRAID_MPI_TEST_ENV}" TIMEOUT 60)
set_property(TEST comm_watchdog APPEND PROPERTY ENVIRONMENT BRAID_COMM_TIMEOUT=2
             BRAID_COMM_TEST_MODE=watchdog)

# a malformed watchdog time is refused by comm_init, naming the variable
add_test(NAME comm_bad_timeout COMMAND test_comm)
set_tests_properties(comm_bad_timeout PROPERTIES ENVIRONMENT "BRAID_COMM_TIMEOUT=10s"
  PASS_REGULAR_EXPRESSION "braid: error: comm_init: BRAID_COMM_TIMEOUT='10s': expected a positive number of seconds")
