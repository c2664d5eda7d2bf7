# Tensor parallelism inside the LLaMA model beyond the per-case llama_tp.<case> tests (each case
# alone, in a world of one, where the tp group has size 1 and the model is the single-rank one):
# the whole suite in one process (`llama_tp`), and under mpirun with 2 and 4 ranks
# (`llama_tp_np2`, `llama_tp_np4`), where the tp group is the world. Included from the top-level
# CMakeLists.txt after tests/comm_tests.cmake, whose braid_mpi_suite() it uses.
braid_mpi_suite(llama_tp test_llama_tp 2 4)
