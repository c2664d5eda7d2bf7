# braid inspect from the command line: a checkpoint (file and directory) and a token shard are
# summarized; damaged or foreign input gives exit 1 and one `braid: error:` line on stderr (no HDF5
# error stack); a bad command line gives exit 2. The inputs come from tests/cli/inspect_fixture.sh
# (prep + a 3-step run of a tiny GPT), a CTest fixture. Included from tests/cli/CMakeLists.txt.
set(INSPECT_OUT ${CMAKE_CURRENT_BINARY_DIR}/inspect_out)
set(INSPECT_EXPECT ${CMAKE_CURRENT_SOURCE_DIR}/inspect_expect.sh)
set(INSPECT_CKPT ${INSPECT_OUT}/ckpt/step_00000003.h5)
set(INSPECT_DAMAGED ${INSPECT_OUT}/damaged)

add_test(NAME cli_inspect_fixture
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/inspect_fixture.sh ${BRAID_BIN}
                 ${PROJECT_SOURCE_DIR} ${INSPECT_OUT})
set_tests_properties(cli_inspect_fixture PROPERTIES FIXTURES_SETUP inspect_inputs
                     ENVIRONMENT "OMP_NUM_THREADS=2" TIMEOUT 300)

# inspect_test(NAME STATUS PATTERN ARGS...): `braid inspect ARGS` exits with STATUS; PATTERN (grep
# -E) matches a line of stdout (STATUS 0) or the one stderr line (otherwise).
function(inspect_test name expected_status pattern)
  add_test(NAME cli_inspect_${name}
           COMMAND bash ${INSPECT_EXPECT} ${expected_status} ${pattern} ${BRAID_BIN} inspect ${ARGN})
  set_tests_properties(cli_inspect_${name} PROPERTIES FIXTURES_REQUIRED inspect_inputs)
endfunction()

# the command line
inspect_test(help 0 "^usage: braid inspect PATH" --help)
inspect_test(no_args 2 "inspect: expected a PATH")
inspect_test(two_paths 2 "inspect: unexpected argument 'b': one PATH at a time" a b)
inspect_test(unknown_option 2 "inspect: unknown option '--frobnicate'" --frobnicate ${INSPECT_CKPT})

# a checkpoint: run state, config, every tensor
inspect_test(checkpoint_path 0 "^braid inspect: checkpoint ${INSPECT_CKPT}$" ${INSPECT_CKPT})
inspect_test(checkpoint_step 0 "^  step +3$" ${INSPECT_CKPT})
inspect_test(checkpoint_tokens 0 "^  tokens seen +384$" ${INSPECT_CKPT})
inspect_test(checkpoint_config 0 "^  model +gpt: n_layer 1, n_head 2, n_kv_head 2, n_embd 32, vocab_size 65, block_size 32$"
             ${INSPECT_CKPT})
inspect_test(checkpoint_tokenizer 0 "^  tokenizer +char, vocab size 65$" ${INSPECT_CKPT})
inspect_test(checkpoint_wte 0 "^  /model/transformer\\.wte\\.weight +float32 +\\(65,32\\) +[0-9]" ${INSPECT_CKPT})
inspect_test(checkpoint_checksums 0 "^  checksums +all [0-9]+ tensors read, checksums verified$" ${INSPECT_CKPT})
inspect_test(checkpoint_dir 0 "^braid inspect: checkpoint ${INSPECT_OUT}/ckpt/step_00000003\\.h5$"
             ${INSPECT_OUT}/ckpt)

# a token shard
inspect_test(shard_count 0 "^  tokens +1003854$" ${INSPECT_OUT}/data/train_000000.bin)
inspect_test(shard_text 0 "^  text +\"First Citizen:\\\\nBefore we proceed" ${INSPECT_OUT}/data/train_000000.bin)
inspect_test(shard_ids 0 "^  token ids +min 0, max 64$" ${INSPECT_OUT}/data/train_000000.bin)

# damaged and foreign input: exit 1, one line
inspect_test(missing_path 1 "^braid: error: ${INSPECT_OUT}/nope\\.h5: cannot open: No such file or directory$"
             ${INSPECT_OUT}/nope.h5)
inspect_test(random_bytes 1 "random\\.bin: neither a braid checkpoint \\(HDF5\\) nor a token shard \\(magic 20240520\\)$"
             ${INSPECT_DAMAGED}/random.bin)
inspect_test(empty_file 1 "empty\\.bin: neither a braid checkpoint" ${INSPECT_DAMAGED}/empty.bin)
inspect_test(truncated_checkpoint 1 "^braid: error: checkpoint ${INSPECT_DAMAGED}/truncated\\.h5: "
             ${INSPECT_DAMAGED}/truncated.h5)
inspect_test(dir_without_latest 1 "empty_dir.*no latest checkpoint" ${INSPECT_DAMAGED}/empty_dir)
inspect_test(short_shard 1 "short_shard\\.bin: truncated: header says" ${INSPECT_DAMAGED}/short_shard.bin)

add_test(NAME cli_inspect_flipped_byte
         COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/inspect_flipped.sh ${BRAID_BIN} ${INSPECT_CKPT}
                 ${INSPECT_OUT}/flipped)
set_tests_properties(cli_inspect_flipped_byte PROPERTIES FIXTURES_REQUIRED inspect_inputs
                     SKIP_RETURN_CODE 77)
