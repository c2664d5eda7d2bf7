# h5py reads a checkpoint braid wrote (tests/checkpoint_h5py.sh); skipped (status 77) where
# /usr/bin/python3 has no h5py. Included from the top-level CMakeLists.txt inside if(CHECK_FOUND).
add_test(NAME checkpoint.h5py_reads_file
         COMMAND bash ${PROJECT_SOURCE_DIR}/tests/checkpoint_h5py.sh $<TARGET_FILE:test_checkpoint>
                 ${PROJECT_VERSION})
set_tests_properties(checkpoint.h5py_reads_file PROPERTIES SKIP_RETURN_CODE 77
                     ENVIRONMENT "OMP_NUM_THREADS=2")
# tests/test_checkpoint_crash.c kills a saving child ~40 times and fsyncs a lot: give it room on a
# slow disk (it takes ~4 s here, ~6 s under the sanitizers).
set_tests_properties(checkpoint_crash.test_kill_during_save_keeps_latest_readable PROPERTIES
                     TIMEOUT 120)
