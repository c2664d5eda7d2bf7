# Data-parallel training under mpirun (tests/cli/dp.sh): dp=N equals dp=1 with grad_accum=N, with
# and without ZeRO-1, resuming across layouts, bad layouts, errors said once, a killed rank.
foreach(case dp2 zero1 dp4 resume_dp2_dp1 resume_dp1_dp2 bad_layout error_once rank_killed)
  add_test(NAME dp_${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/dp.sh ${case} $<TARGET_FILE:braid>
                   ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_BINARY_DIR}/dp_out)
  set_tests_properties(dp_${case} PROPERTIES TIMEOUT 300)
  if(BRAID_SANITIZE) # Open MPI's own allocations look like leaks to LeakSanitizer
    set_tests_properties(dp_${case} PROPERTIES ENVIRONMENT ASAN_OPTIONS=detect_leaks=0)
  endif()
endforeach()
