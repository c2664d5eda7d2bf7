# braid launch (tests/cli/launch.sh): the command line (usage errors exit 2 before anything runs),
# then whole jobs under mpirun: the rank map and the losses of braid train, a bad layout, restarts
# after a killed rank, Ctrl-C and SIGTERM passed on to the ranks. Included from
# tests/cli/CMakeLists.txt.
braid_cli_test(launch_help 0 "usage: braid launch [-n N] [--hostfile F] [--max-restarts K] CONFIG.yaml"
               launch --help)
braid_cli_test(launch_no_config 2 "braid: error: launch: expected a config file" launch -n 2)
braid_cli_test(launch_missing_config 2 "braid: error: nope.yaml: cannot open: No such file or directory"
               launch nope.yaml)
braid_cli_test(launch_unknown_option 2
               "braid: error: launch: unknown option '--frobnicate' (see braid launch --help)"
               launch --frobnicate job.yaml)
braid_cli_test(launch_bad_n 2 "braid: error: launch: -n 'two': expected a whole number of ranks from 1 to"
               launch -n two job.yaml)
braid_cli_test(launch_zero_n 2 "braid: error: launch: -n '0': expected a whole number of ranks from 1 to"
               launch -n 0 job.yaml)
braid_cli_test(launch_n_without_value 2 "braid: error: launch: -n needs a value" launch -n)
braid_cli_test(launch_bad_max_restarts 2
               "braid: error: launch: --max-restarts '-1': expected a whole number from 0 to"
               launch --max-restarts=-1 job.yaml)
braid_cli_test(launch_missing_hostfile 2 "braid: error: launch: --hostfile nohosts: cannot read it"
               launch --hostfile nohosts job.yaml)
braid_cli_test(launch_two_configs 2 "braid: error: launch: unexpected argument 'b.yaml' after the config file a.yaml"
               launch a.yaml b.yaml)

foreach(case dp2 default_n bad_layout restart restart_rules sigint sigterm sigint_twice no_mpirun)
  add_test(NAME launch_${case}
           COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/launch.sh ${case} $<TARGET_FILE:braid>
                   ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_BINARY_DIR}/launch_out)
  set_tests_properties(launch_${case} PROPERTIES TIMEOUT 300)
  if(BRAID_SANITIZE) # Open MPI's own allocations look like leaks to LeakSanitizer
    set_tests_properties(launch_${case} PROPERTIES ENVIRONMENT ASAN_OPTIONS=detect_leaks=0)
  endif()
endforeach()
