/* Parameter init schemes: the elementary fills, PyTorch's per-layer defaults, and GPT-2's scheme
 * (nanoGPT's _init_weights). Draws come from the counter-based bt_rng in tensor.h, so an init is a
 * pure function of the seed and the order modules are visited in (depth first, parent first). */
#include <math.h>

#include "core/nn.h"

void nn_init_normal(bt_tensor *t, struct bt_rng *rng, double mean, double std) {
    if (t) bt_fill_normal(t, rng, (float)mean, (float)std);
}

void nn_init_uniform(bt_tensor *t, struct bt_rng *rng, double low, double high) {
    if (t) bt_fill_uniform(t, rng, (float)low, (float)high);
}

void nn_init_zeros(bt_tensor *t) {
    if (t) bt_fill(t, 0.0);
}

void nn_init_ones(bt_tensor *t) {
    if (t) bt_fill(t, 1.0);
}

static void init_norm(struct nn_module *m) {
    if (m->kind == NN_LAYERNORM) {
        struct nn_layernorm *ln = (struct nn_layernorm *)m;
        nn_init_ones(ln->weight);
        nn_init_zeros(ln->bias);
    } else if (m->kind == NN_RMSNORM) {
        nn_init_ones(((struct nn_rmsnorm *)m)->weight);
    }
}

void nn_init_pytorch_default(struct nn_module *m, struct bt_rng *rng) {
    if (!m) return;
    if (m->kind == NN_LINEAR) {
        /* kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)) * sqrt(3/fan_in) = 1/sqrt(fan_in) */
        struct nn_linear *lin = (struct nn_linear *)m;
        double bound = 1.0 / sqrt((double)lin->in_features);
        nn_init_uniform(lin->weight, rng, -bound, bound);
        nn_init_uniform(lin->bias, rng, -bound, bound);
    } else if (m->kind == NN_EMBEDDING) {
        nn_init_normal(((struct nn_embedding *)m)->weight, rng, 0.0, 1.0);
    } else {
        init_norm(m);
    }
    for (int k = 0; k < m->n_children; k++)
        nn_init_pytorch_default(m->children[k], rng);
}

static void init_gpt2(struct nn_module *m, struct bt_rng *rng, double residual_std) {
    if (m->kind == NN_LINEAR) {
        struct nn_linear *lin = (struct nn_linear *)m;
        nn_init_normal(lin->weight, rng, 0.0, lin->residual_projection ? residual_std : 0.02);
        nn_init_zeros(lin->bias);
    } else if (m->kind == NN_EMBEDDING) {
        nn_init_normal(((struct nn_embedding *)m)->weight, rng, 0.0, 0.02);
    } else {
        init_norm(m);
    }
    for (int k = 0; k < m->n_children; k++)
        init_gpt2(m->children[k], rng, residual_std);
}

bt_status nn_init_gpt2(struct nn_module *m, struct bt_rng *rng, int n_layer) {
    if (!m) return bt_has_error() ? BT_ERR : bt_error("nn: init_gpt2: module is NULL");
    if (n_layer < 1) return bt_error("nn: init_gpt2: n_layer must be at least 1, got %d", n_layer);
    /* GPT-2 paper, section 2.3: residual-path weights scaled by 1/sqrt(N), N = 2 * n_layer
     * residual additions (attention and MLP per block) */
    init_gpt2(m, rng, 0.02 / sqrt(2.0 * n_layer));
    return BT_OK;
}
