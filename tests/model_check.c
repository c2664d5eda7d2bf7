/* The tiny models and model_create checks of the single-process model tests (see
 * model_check.h). */
#include "tests/model_check.h"

#include "core/runtime.h"
#include "tests/gradcheck.h"

struct model_config model_check_tiny_gpt(bool bias, bool tied, int64_t vocab_size,
                                         int64_t n_layer) {
    return (struct model_config){.arch = MODEL_GPT,
                                 .vocab_size = vocab_size,
                                 .block_size = 8,
                                 .n_layer = n_layer,
                                 .n_head = 2,
                                 .n_kv_head = 2,
                                 .n_embd = 8,
                                 .ffn_hidden = 32,
                                 .dropout = 0.0,
                                 .bias = bias,
                                 .gelu = BT_GELU_TANH,
                                 .norm_eps = 1e-5,
                                 .rope_theta = 10000.0,
                                 .tie_embeddings = tied};
}

struct model_config model_check_tiny_llama(bool tied, int64_t vocab_size, int64_t n_layer) {
    return (struct model_config){.arch = MODEL_LLAMA,
                                 .vocab_size = vocab_size,
                                 .block_size = 8,
                                 .n_layer = n_layer,
                                 .n_head = 4,
                                 .n_kv_head = 2,
                                 .n_embd = 16,
                                 .ffn_hidden = 24,
                                 .dropout = 0.0,
                                 .bias = false,
                                 .gelu = BT_GELU_TANH,
                                 .norm_eps = 1e-6,
                                 .rope_theta = 10000.0,
                                 .tie_embeddings = tied};
}

struct model *model_check_create(const struct model_config *cfg, uint64_t seed) {
    struct model *m = model_create(cfg, seed);
    ck_assert_msg(m != NULL, "model_create failed: %s", bt_last_error());
    return m;
}

void model_check_create_fails(struct model_config c, const char *message) {
    struct model *m = model_create(&c, 1);
    if (m) model_free(m);
    ck_assert_msg(m == NULL, "model_create accepted a config that should fail with \"%s\"",
                  message);
    ck_assert_error_contains(message);
}
