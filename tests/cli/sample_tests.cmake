# braid sample from the command line: usage errors (exit 2) before any file is read, a missing
# checkpoint (exit 1), and text from a tiny shakespeare_char model that the fixture test
# sample_train trains (tests/cli/sample.sh). Included from tests/cli/CMakeLists.txt.
set(SAMPLE_OUT ${CMAKE_CURRENT_BINARY_DIR}/sample_out)

braid_cli_test(sample_help 0 "usage: braid sample --checkpoint PATH|DIR" sample --help)
braid_cli_test(sample_no_checkpoint 2 "braid: error: sample: missing --checkpoint PATH|DIR" sample)
braid_cli_test(sample_unknown_option 2
               "braid: error: sample: unknown option '--length' (see braid sample --help)"
               sample --checkpoint ${SAMPLE_OUT}/x --length 5)
braid_cli_test(sample_option_without_value 2 "braid: error: sample: --prompt needs a value"
               sample --checkpoint ${SAMPLE_OUT}/x --prompt)
braid_cli_test(sample_negative_tokens 2
               "braid: error: sample: --tokens '-3': expected a whole number from 0 to 100000000"
               sample --checkpoint ${SAMPLE_OUT}/x --tokens -3)
braid_cli_test(sample_bad_temperature 2 "braid: error: sample: --temperature 'abc': expected a number >= 0"
               sample --checkpoint ${SAMPLE_OUT}/x --temperature abc)
braid_cli_test(sample_negative_temperature 2 "--temperature '-1': expected a number >= 0"
               sample --checkpoint ${SAMPLE_OUT}/x --temperature=-1)
braid_cli_test(sample_negative_top_k 2 "braid: error: sample: --top-k '-1': expected a whole number >= 0"
               sample --checkpoint ${SAMPLE_OUT}/x --top-k -1)
braid_cli_test(sample_bad_seed 2 "braid: error: sample: --seed 'x1': expected a whole number >= 0"
               sample --checkpoint ${SAMPLE_OUT}/x --seed x1)
braid_cli_test(sample_bad_device 2 "braid: error: sample: --device 'gpu': expected cpu or cuda"
               sample --checkpoint ${SAMPLE_OUT}/x --device gpu)
braid_cli_test(sample_missing_checkpoint 1 "${SAMPLE_OUT}/nope"
               sample --checkpoint ${SAMPLE_OUT}/nope)

add_test(NAME sample_train
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/sample.sh train $<TARGET_FILE:braid>
                 ${PROJECT_SOURCE_DIR} ${SAMPLE_OUT}/shakespeare_char)
set_tests_properties(sample_train PROPERTIES ENVIRONMENT "OMP_NUM_THREADS=2" TIMEOUT 300
                     FIXTURES_SETUP sample_model)
foreach(case length seed greedy default file_and_dir bad_prompt no_tokenizer fake_cuda)
  add_test(NAME sample_${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/sample.sh ${case} $<TARGET_FILE:braid>
                   ${PROJECT_SOURCE_DIR} ${SAMPLE_OUT}/shakespeare_char)
  set_tests_properties(sample_${case} PROPERTIES ENVIRONMENT "OMP_NUM_THREADS=2" TIMEOUT 120
                       FIXTURES_REQUIRED sample_model)
endforeach()
