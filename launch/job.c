/* What braid train and braid launch share about a job (launch/job.h): the vocabulary size from
 * the data's tokenizer, the checks of what this build can run, the model config. */
#include "launch/job.h"

#include <libgen.h>
#include <stdio.h>
#include <string.h>

#include "core/cuda/cuda.h"
#include "core/runtime.h"
#include "data/tokenizer.h"

bt_status job_resolve_vocab_size(struct braid_config *cfg) {
    if (cfg->model.vocab_size > 0 || !cfg->data.train[0]) return BT_OK;
    char pattern[CFG_STR];
    snprintf(pattern, sizeof pattern, "%s", cfg->data.train);
    const char *dir = dirname(pattern);
    struct tokenizer *tok = tokenizer_load(dir, NULL);
    if (!tok) {
        char why[BT_ERROR_MAX / 2];
        snprintf(why, sizeof why, "%s", bt_last_error());
        return bt_error("model.vocab_size is not set and %s/tokenizer.yaml cannot be read (%s): "
                        "set model.vocab_size or prepare the data with braid prep",
                        dir, why);
    }
    cfg->model.vocab_size = tokenizer_vocab_size(tok);
    tokenizer_free(tok);
    return BT_OK;
}

bt_status job_check_cuda(const char *what) {
    char why[256];
    if (!bt_cuda_built() && !bt_fake_cuda())
        return bt_error("%s: braid was built without the CUDA backend (nvcc was not found at "
                        "build time; use cpu)",
                        what);
    if (bt_cuda_device_count(why, sizeof why) == 0)
        return bt_error("%s: no CUDA device visible (%s)", what, why);
    return BT_OK;
}

bt_status job_check_supported(const struct braid_config *cfg) {
    if (strcmp(cfg->train.device, "cuda") == 0) {
        if (job_check_cuda("train.device=cuda") != BT_OK) return BT_ERR;
        /* one GPU per rank: dp's and tp's collectives go through NCCL (comm/nccl.c), the
         * pipeline's activations through host copies over MPI (parallel/pipeline.c) */
        return BT_OK; /* float32, or bfloat16: bf16 matmuls (core/cuda/matmul.cu) */
    }
    if (strcmp(cfg->train.dtype, "float32") != 0)
        return bt_error("train.dtype=%s: CPU training runs in float32 (bfloat16 is for "
                        "train.device=cuda)",
                        cfg->train.dtype);
    return BT_OK;
}

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
