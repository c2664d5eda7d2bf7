# Tensor parallelism inside the GPT model beyond the per-case gpt_tp.<case> tests (each case alone,
# in a world of one, where the tp group has size 1 and the model is the single-rank one): the whole
# suite in one process (`gpt_tp`), and under mpirun with 2 and 4 ranks (`gpt_tp_np2`,
# `gpt_tp_np4`), where the tp group is the world. Included from the top-level CMakeLists.txt
# after tests/comm_tests.cmake, whose braid_mpi_suite() it uses.
braid_mpi_suite(gpt_tp test_gpt_tp 2 4)
