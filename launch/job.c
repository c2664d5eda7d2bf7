/* The model config of a job's model section (launch/job.h). */
#include "launch/job.h"

#include <string.h>

struct model_config job_model_config(const struct cfg_model *m) {
    struct model_config mc = {
        .arch = strcmp(m->arch, "llama") == 0 ? MODEL_LLAMA : MODEL_GPT,
        .vocab_size = m->vocab_size,
        .block_size = m->block_size,
        .n_layer = m->n_layer,
        .n_head = m->n_head,
        .n_kv_head = m->n_kv_head,
        .n_embd = m->n_embd,
        .ffn_hidden = m->ffn_hidden,
        .dropout = m->dropout,
        .bias = m->bias,
        .gelu = strcmp(m->gelu, "exact") == 0 ? BT_GELU_EXACT : BT_GELU_TANH,
        .norm_eps = m->norm_eps,
        .rope_theta = m->rope_theta,
        .tie_embeddings = m->tie_embeddings,
    };
    return mc;
}
