# The pipeline scheduler (tests/test_pipeline.c): `pipeline.<case>` and `pipeline` alone (one
# stage), `pipeline_np2` and `pipeline_np4` under mpirun (the world is the pipeline). Included from
# the top-level CMakeLists.txt after tests/comm_tests.cmake, whose braid_mpi_suite() it uses.
braid_mpi_suite(pipeline test_pipeline 2 4)
