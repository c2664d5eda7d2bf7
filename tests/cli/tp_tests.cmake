# Tensor-parallel training under mpirun (tests/cli/tp.sh): tp=2 equals tp=1 for GPT, with sequence
# parallelism, for LLaMA with grouped-query attention; dp2×tp2 equals grad_accum=2; checkpoints
# reshard between tp=2 and tp=1 on resume; a layout whose heads do not split is named.
foreach(case tp2 sp llama_gqa dp2_tp2 resume_tp2_tp1 resume_tp1_tp2 bad_layout)
  add_test(NAME tp_${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/tp.sh ${case} $<TARGET_FILE:braid>
                   ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_BINARY_DIR}/tp_out)
  set_tests_properties(tp_${case} PROPERTIES TIMEOUT 300)
  if(BRAID_SANITIZE) # Open MPI's own allocations look like leaks to LeakSanitizer
    set_tests_properties(tp_${case} PROPERTIES ENVIRONMENT ASAN_OPTIONS=detect_leaks=0)
  endif()
endforeach()
