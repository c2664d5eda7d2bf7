# Pipeline-parallel training under mpirun (tests/cli/pp.sh): pp=2 with 1F1B and GPipe equals one
# rank with the same micro-batches; the 3-D invariance test at every layout of 4 ranks and at
# dp2×tp2×pp2 on 8; a tp2×pp2 checkpoint resumes at dp=4 and at one rank; a killed stage ends the
# job.
foreach(case pp2_1f1b pp2_gpipe untied explicit_split interleaved layouts grid8 resume_tp2pp2 stage_killed)
  add_test(NAME pp_${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/pp.sh ${case} $<TARGET_FILE:braid>
                   ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_BINARY_DIR}/pp_out)
  set_tests_properties(pp_${case} PROPERTIES TIMEOUT 300)
  if(BRAID_SANITIZE) # Open MPI's own allocations look like leaks to LeakSanitizer
    set_tests_properties(pp_${case} PROPERTIES ENVIRONMENT ASAN_OPTIONS=detect_leaks=0)
  endif()
endforeach()
