# braid train on the GPU (tests/gpu/train_cuda.sh), label gpu: "skipped" (exit 77) where no GPU is
# visible. Included from CMakeLists.txt.
foreach(case cpu_vs_cuda resume cpu_to_cuda bf16 dp2 tp2 pp2 gemm_attention cudnn_attention
             attention_env epilogues epilogues_env)
  add_test(NAME gpu_train_${case}
           COMMAND bash ${PROJECT_SOURCE_DIR}/tests/gpu/train_cuda.sh ${case} $<TARGET_FILE:braid>
                   ${PROJECT_SOURCE_DIR} ${CMAKE_BINARY_DIR}/gpu_out)
  set_tests_properties(gpu_train_${case} PROPERTIES TIMEOUT 300 LABELS gpu SKIP_RETURN_CODE 77)
endforeach()
