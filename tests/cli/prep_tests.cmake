# braid prep from the command line: usage errors (exit 2), runtime errors (exit 1) and successful
# runs on tests/cli/data/small.txt (60 lines of tinyshakespeare plus a line of non-ASCII text).
# Included from tests/cli/CMakeLists.txt; outputs go under the build tree.
set(PREP_DATA ${CMAKE_CURRENT_SOURCE_DIR}/data)
set(PREP_OUT ${CMAKE_CURRENT_BINARY_DIR}/prep_out)

braid_cli_test(prep_help 0 "usage: braid prep --tokenizer byte|char|gpt2" prep --help)
braid_cli_test(prep_no_args 2 "braid: error: prep: missing --tokenizer byte|char|gpt2" prep)
braid_cli_test(prep_missing_input 2 "braid: error: prep: missing --input TEXT (see braid prep --help)"
               prep --tokenizer char --out ${PREP_OUT}/missing)
braid_cli_test(prep_missing_out 2 "braid: error: prep: missing --out DIR"
               prep --tokenizer char --input ${PREP_DATA}/small.txt)
braid_cli_test(prep_unknown_tokenizer 2
               "braid: error: prep: --tokenizer: unknown tokenizer 'wordpiece' (choices: byte, char, gpt2)"
               prep --tokenizer wordpiece --input ${PREP_DATA}/small.txt --out ${PREP_OUT}/x)
braid_cli_test(prep_unknown_option 2 "braid: error: prep: unknown option '--frobnicate' (see braid prep --help)"
               prep --tokenizer char --frobnicate 1)
braid_cli_test(prep_option_without_value 2 "braid: error: prep: --out needs a value"
               prep --tokenizer char --input ${PREP_DATA}/small.txt --out)
braid_cli_test(prep_val_fraction_one 2 "braid: error: prep: --val-fraction '1': expected a number in [0, 1)"
               prep --tokenizer char --input ${PREP_DATA}/small.txt --out ${PREP_OUT}/x --val-fraction 1)
braid_cli_test(prep_val_fraction_negative 2 "--val-fraction '-0.1': expected a number in [0, 1)"
               prep --tokenizer char --input ${PREP_DATA}/small.txt --out ${PREP_OUT}/x --val-fraction=-0.1)
braid_cli_test(prep_val_fraction_not_number 2 "--val-fraction 'ten': expected a number in [0, 1)"
               prep --tokenizer char --input ${PREP_DATA}/small.txt --out ${PREP_OUT}/x --val-fraction ten)
braid_cli_test(prep_bad_shard_tokens 2 "--shard-tokens '0': expected a whole number from 1 to 2147483647"
               prep --tokenizer char --input ${PREP_DATA}/small.txt --out ${PREP_OUT}/x --shard-tokens 0)
braid_cli_test(prep_input_missing 1
               "braid: error: prep: cannot read input '${PREP_DATA}/nope.txt': No such file or directory"
               prep --tokenizer char --input ${PREP_DATA}/nope.txt --out ${PREP_OUT}/x)
braid_cli_test(prep_invalid_utf8 1
               "input '${PREP_DATA}/bad_utf8.txt': invalid UTF-8 at byte offset 16"
               prep --tokenizer gpt2 --input ${PREP_DATA}/bad_utf8.txt --out ${PREP_OUT}/x)
braid_cli_test(prep_too_few_tokens 1 "braid: error: prep: too few tokens: the train split of"
               prep --tokenizer gpt2 --input ${PREP_DATA}/small.txt --out ${PREP_OUT}/x --val-fraction 0.9999)
braid_cli_test(prep_output_not_a_directory 1
               "cannot create output directory '${PREP_DATA}/small.txt/out': Not a directory"
               prep --tokenizer char --input ${PREP_DATA}/small.txt --out ${PREP_DATA}/small.txt/out)
braid_cli_test(prep_small_char 0 "train  1410 tokens from 1410 characters (first 90% of the text) in 2 shards"
               prep --tokenizer char --input ${PREP_DATA}/small.txt --out ${PREP_OUT}/char --shard-tokens 1000)
braid_cli_test(prep_small_byte 0 "val    172 tokens from 157 characters (last 10% of the text) in 1 shard"
               prep --tokenizer byte --input ${PREP_DATA}/small.txt --out ${PREP_OUT}/byte)
# 395 and 53: python3 tests/reference/gpt2_encode.py on the two halves of small.txt
braid_cli_test(prep_small_gpt2 0 "train  395 tokens from 1410 characters"
               prep --tokenizer gpt2 --input ${PREP_DATA}/small.txt --out ${PREP_OUT}/gpt2)
braid_cli_test(prep_small_no_val 0 "val    none (--val-fraction 0)"
               prep --tokenizer gpt2 --input ${PREP_DATA}/small.txt --out ${PREP_OUT}/noval --val-fraction 0)
