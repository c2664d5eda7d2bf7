# braid train from the command line: bad input gives one named error line and a non-zero exit
# before any work; a short run of the shakespeare_char job trains (tests/cli/train_shakespeare.sh).
# Included from tests/cli/CMakeLists.txt.
set(CONFIGS ${PROJECT_SOURCE_DIR}/configs)
set(CONFIG_FILES ${PROJECT_SOURCE_DIR}/tests/config_files)
set(TRAIN_OUT ${CMAKE_CURRENT_BINARY_DIR}/train_out)

braid_cli_test(train_help 0 "usage: braid train CONFIG.yaml" train --help)
braid_cli_test(train_no_config 2 "braid: error: train: expected a config file first" train)
braid_cli_test(train_missing_config 2 "nope.yaml: cannot open" train ${TRAIN_OUT}/nope.yaml)
braid_cli_test(train_unknown_key 2 "unknown_key.yaml:3: unknown key 'model.n_layers' (did you mean 'model.n_layer'?)"
               train ${CONFIG_FILES}/unknown_key.yaml)
braid_cli_test(train_bad_override 2 "command line: --model.n_layer=four: expected an integer, got 'four'"
               train ${CONFIGS}/shakespeare_char.yaml --model.n_layer=four)
braid_cli_test(train_bad_relation 2 "model.n_embd=128 is not divisible by model.n_head=3"
               train ${CONFIGS}/shakespeare_char.yaml --model.n_head=3 --model.vocab_size=65)
# no GPU visible (CUDA_VISIBLE_DEVICES empty hides any the machine has): one line naming why
if(BRAID_HAVE_CUDA)
  braid_cli_test(train_cuda_unavailable 2 "braid: error: train.device=cuda: no CUDA device visible (cudaGetDeviceCount: "
                 train ${CONFIGS}/shakespeare_char.yaml --train.device=cuda --model.vocab_size=65)
  set_tests_properties(cli_train_cuda_unavailable PROPERTIES ENVIRONMENT "CUDA_VISIBLE_DEVICES=")
else()
  braid_cli_test(train_cuda_unavailable 2 "train.device=cuda: braid was built without the CUDA backend"
                 train ${CONFIGS}/shakespeare_char.yaml --train.device=cuda --model.vocab_size=65)
endif()
braid_cli_test(train_bad_mfu_peak 2 "braid: error: BRAID_MFU_PEAK='fast': expected a positive number of GFLOP/s"
               train ${CONFIGS}/shakespeare_char.yaml --model.vocab_size=65)
set_tests_properties(cli_train_bad_mfu_peak PROPERTIES ENVIRONMENT "BRAID_MFU_PEAK=fast")
braid_cli_test(train_no_data 1 "no files match '${TRAIN_OUT}/none/train_*.bin'"
               train ${CONFIGS}/shakespeare_char.yaml --model.vocab_size=65
               --data.train=${TRAIN_OUT}/none/train_*.bin --log.dir=${TRAIN_OUT}/log)
braid_cli_test(train_no_vocab 2 "model.vocab_size is not set and ${TRAIN_OUT}/none/tokenizer.yaml cannot be read"
               train ${CONFIGS}/shakespeare_char.yaml --data.train=${TRAIN_OUT}/none/train_*.bin)

add_test(NAME train_shakespeare_char
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/train_shakespeare.sh $<TARGET_FILE:braid>
                 ${PROJECT_SOURCE_DIR} ${TRAIN_OUT}/shakespeare_char)
set_tests_properties(train_shakespeare_char PROPERTIES ENVIRONMENT "OMP_NUM_THREADS=2" TIMEOUT 900)

# Resuming from checkpoints (tests/cli/resume.sh): bit-identical trajectories, refused and reported
# config changes, damaged checkpoints, broken `latest`.
foreach(case bitexact redo refuse_model report_changes damaged broken_latest nothing_left none_warns
             sigterm)
  add_test(NAME resume_${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/resume.sh ${case} $<TARGET_FILE:braid>
                   ${PROJECT_SOURCE_DIR} ${TRAIN_OUT}/resume)
  set_tests_properties(resume_${case} PROPERTIES ENVIRONMENT "OMP_NUM_THREADS=2" TIMEOUT 300)
endforeach()

# BRAID_PROFILE=1: the per-op time table, and MFU's peak (tests/cli/profile.sh)
foreach(case one_rank dp2 mfu_peak)
  add_test(NAME profile_${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/profile.sh ${case} $<TARGET_FILE:braid>
                   ${PROJECT_SOURCE_DIR} ${TRAIN_OUT}/profile)
  set_tests_properties(profile_${case} PROPERTIES TIMEOUT 300)
endforeach()
if(BRAID_SANITIZE) # dp2 runs under mpirun: Open MPI's own allocations look like leaks
  set_tests_properties(profile_dp2 PROPERTIES ENVIRONMENT ASAN_OPTIONS=detect_leaks=0)
endif()

# BRAID_FAKE_CUDA=1: train.device=cuda on the CPU's kernels over host memory (tests/cli/
# fake_cuda.sh), so machines without a GPU run every path of a GPU job above the kernels
foreach(case train resume_cross dp tp pp grid)
  add_test(NAME fake_cuda_${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/fake_cuda.sh ${case} $<TARGET_FILE:braid>
                   ${PROJECT_SOURCE_DIR} ${TRAIN_OUT}/fake_cuda)
  set_tests_properties(fake_cuda_${case} PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77)
endforeach()
if(BRAID_SANITIZE) # these run under mpirun
  set_tests_properties(fake_cuda_dp fake_cuda_tp fake_cuda_pp fake_cuda_grid PROPERTIES
                       ENVIRONMENT ASAN_OPTIONS=detect_leaks=0)
endif()
