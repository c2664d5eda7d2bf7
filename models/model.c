/* The model interface: config checks, dispatch to the family builders (models/gpt.c,
 * models/llama.c), the init of tp shards and pipeline stages from the whole single-rank model,
 * the checks every forward shares, the loss, the stages' layer split, parameters and FLOPs. */
#include <math.h>
#include <stdlib.h>

#include "models/model_internal.h"
#include "parallel/tp.h"

static const char *arch_name(model_arch arch) {
    return arch == MODEL_GPT ? "gpt" : arch == MODEL_LLAMA ? "llama" : "?";
}

static bt_status check_at_least_one(const char *key, int64_t v) {
    if (v >= 1) return BT_OK;
    return bt_error("model.%s must be at least 1, got %lld", key, (long long)v);
}

static bt_status check_divisible_by_tp(const char *key, int64_t v, int tp) {
    if (v % tp == 0) return BT_OK;
    return bt_error("model.%s=%lld is not divisible by parallel.tp=%d", key, (long long)v, tp);
}

/* With a tp group of P > 1: every split count divisible by P (n_embd follows from n_head). Each
 * rank holds whole query heads and whole key/value heads (llama's grouped-query attention: the
 * query heads of rank r use exactly its kv heads), so n_kv_head too; replicating kv heads when
 * P > n_kv_head is not supported. */
static bt_status check_tensor_parallel(const struct model_config *c) {
    int tp = model_tp_size(c);
    if (tp == 1) return BT_OK;
    if (check_divisible_by_tp("n_head", c->n_head, tp) != BT_OK ||
        check_divisible_by_tp("n_kv_head", c->n_kv_head, tp) != BT_OK ||
        check_divisible_by_tp("vocab_size", c->vocab_size, tp) != BT_OK ||
        check_divisible_by_tp("ffn_hidden", c->ffn_hidden, tp) != BT_OK)
        return BT_ERR;
    return BT_OK;
}

/* With pp_stages > 1: this stage is one of them and holds a non-empty range of layers, the first
 * stage from layer 0 and the last to n_layer. */
static bt_status check_pipeline(const struct model_config *c) {
    if (c->pp_stages < 0)
        return bt_error("model: pp_stages must be at least 0, got %d", c->pp_stages);
    if (c->pp_stages <= 1) return BT_OK;
    int S = c->pp_stages;
    long long L = c->n_layer, begin = c->pp_layer_begin, end = c->pp_layer_end;
    if (S > c->n_layer)
        return bt_error("model: pp_stages=%d is more than model.n_layer=%lld (every pipeline stage "
                        "needs a layer)",
                        S, L);
    if (c->pp_stage < 0 || c->pp_stage >= S)
        return bt_error("model: pp_stage=%d is not a stage of pp_stages=%d (expected 0 to %d)",
                        c->pp_stage, S, S - 1);
    if (!(0 <= begin && begin < end && end <= L))
        return bt_error(
            "model: pipeline stage %d's layers [pp_layer_begin=%lld, pp_layer_end=%lld) "
            "are not a non-empty range of [0, model.n_layer=%lld)",
            c->pp_stage, begin, end, L);
    if (c->pp_stage == 0 && begin != 0)
        return bt_error("model: the first pipeline stage (pp_stage=0) must start at layer 0, got "
                        "pp_layer_begin=%lld",
                        begin);
    if (c->pp_stage == S - 1 && end != L)
        return bt_error("model: the last pipeline stage (pp_stage=%d of pp_stages=%d) must end at "
                        "model.n_layer=%lld, got pp_layer_end=%lld",
                        c->pp_stage, S, L, end);
    return BT_OK;
}

/* Every value and relation the builders rely on; messages name the config keys. */
static bt_status check_config(const struct model_config *c) {
    if (c->arch != MODEL_GPT && c->arch != MODEL_LLAMA)
        return bt_error("model.arch: unknown architecture %d (expected gpt or llama)",
                        (int)c->arch);
    const char *keys[] = {"vocab_size", "block_size", "n_layer",   "n_head",
                          "n_kv_head",  "n_embd",     "ffn_hidden"};
    const int64_t values[] = {c->vocab_size, c->block_size, c->n_layer,   c->n_head,
                              c->n_kv_head,  c->n_embd,     c->ffn_hidden};
    for (int k = 0; k < (int)(sizeof(values) / sizeof(values[0])); k++)
        if (check_at_least_one(keys[k], values[k]) != BT_OK) return BT_ERR;
    if (c->n_layer > 1000000)
        return bt_error("model.n_layer=%lld is too large", (long long)c->n_layer);
    if (c->n_embd % c->n_head != 0)
        return bt_error("model.n_embd=%lld is not divisible by model.n_head=%lld",
                        (long long)c->n_embd, (long long)c->n_head);
    if (c->n_head % c->n_kv_head != 0)
        return bt_error("model.n_head=%lld is not divisible by model.n_kv_head=%lld",
                        (long long)c->n_head, (long long)c->n_kv_head);
    if (!(c->dropout >= 0.0 && c->dropout < 1.0))
        return bt_error("model.dropout must be in [0, 1), got %g", c->dropout);
    if (!(c->norm_eps >= 0.0 && isfinite(c->norm_eps)))
        return bt_error("model.norm_eps must be a non-negative number, got %g", c->norm_eps);
    if (c->arch == MODEL_GPT) {
        if (c->n_kv_head != c->n_head)
            return bt_error("model.n_kv_head=%lld must equal model.n_head=%lld for model.arch=gpt "
                            "(grouped-query attention is llama only)",
                            (long long)c->n_kv_head, (long long)c->n_head);
        if (c->gelu != BT_GELU_TANH && c->gelu != BT_GELU_EXACT)
            return bt_error("model.gelu: unknown kind %d (expected tanh or exact)", (int)c->gelu);
    } else {
        int64_t hs = c->n_embd / c->n_head;
        if (hs % 2 != 0)
            return bt_error("model.n_embd=%lld / model.n_head=%lld gives head size %lld, which "
                            "must be even for rotary embeddings (model.arch=llama)",
                            (long long)c->n_embd, (long long)c->n_head, (long long)hs);
        if (!(c->rope_theta > 0.0 && isfinite(c->rope_theta)))
            return bt_error("model.rope_theta must be a positive number, got %g", c->rope_theta);
    }
    if (check_tensor_parallel(c) != BT_OK) return BT_ERR;
    return check_pipeline(c);
}

static bt_status build(struct model *m, struct bt_rng *rng) {
    return m->config.arch == MODEL_GPT ? gpt_build(m, rng) : llama_build(m, rng);
}

/* A tp shard or a pipeline stage starts from the whole single-rank model's weights: that model is
 * built from the same rng (so with the same draws, in the same order, tie included), each of m's
 * parameters takes this rank's piece of the parameter of the same name in it (nn_split_take: the
 * tp layers registered their splits, the other parameters copy whole; a tied copy on the last
 * stage takes the embedding), and it is freed. Costs the whole model's memory once, at build. */
static bt_status init_from_single_rank(struct model *m, struct bt_rng *rng) {
    struct model full = {.config = m->config};
    full.config.tp_group = NULL;
    full.config.sequence_parallel = false;
    full.config.pp_stages = full.config.pp_stage = 0;
    full.config.pp_layer_begin = full.config.pp_layer_end = 0;
    struct nn_param_list mine = {0};
    bt_status st = build(&full, rng);
    if (st == BT_OK) st = nn_named_parameters(m->root, &mine);
    for (int64_t i = 0; st == BT_OK && i < mine.count; i++) {
        struct nn_split split = nn_param_split(&mine, i);
        bt_tensor *whole = nn_get_parameter(full.root, mine.names[i]);
        if (!whole || nn_split_take(&split, whole, mine.tensors[i], 0) != BT_OK) st = BT_ERR;
    }
    nn_param_list_free(&mine);
    nn_module_free(full.root);
    free(full.impl);
    return st;
}

struct model *model_create(const struct model_config *cfg, uint64_t seed) {
    if (!cfg) {
        bt_error("model: config is NULL");
        return NULL;
    }
    if (check_config(cfg) != BT_OK) return NULL;
    struct model *m = calloc(1, sizeof(*m));
    if (!m) {
        bt_error("model: out of memory creating a %s model", arch_name(cfg->arch));
        return NULL;
    }
    m->config = *cfg;
    struct bt_rng rng = bt_rng_make(seed);
    bt_status st = build(m, &rng);
    if (st == BT_OK && !model_config_is_whole(cfg)) st = init_from_single_rank(m, &rng);
    if (st != BT_OK) {
        model_free(m);
        return NULL;
    }
    return m;
}

void model_free(struct model *m) {
    if (!m) return;
    nn_module_free(m->root);
    free(m->impl);
    free(m);
}

/* idx (B, T) integer with 1 <= T <= block_size; targets NULL or integer of idx's shape */
static bt_status check_batch(const struct model *m, const bt_tensor *idx,
                             const bt_tensor *targets) {
    const char *arch = arch_name(m->config.arch);
    char a[96], b[96];
    if (idx->ndim != 2)
        return bt_error("%s: idx %s must be 2-D (batch, time)", arch,
                        bt_shape_str(idx, a, sizeof a));
    if (idx->dtype != BT_I32 && idx->dtype != BT_I64 && idx->dtype != BT_U16)
        return bt_error("%s: idx must hold token ids (int32, int64 or uint16), got %s %s", arch,
                        bt_dtype_name(idx->dtype), bt_shape_str(idx, a, sizeof a));
    int64_t T = idx->shape[1];
    if (T > m->config.block_size)
        return bt_error("%s: idx %s has sequence length %lld, more than model.block_size=%lld",
                        arch, bt_shape_str(idx, a, sizeof a), (long long)T,
                        (long long)m->config.block_size);
    if (idx->shape[0] < 1 || T < 1)
        return bt_error("%s: idx %s is empty", arch, bt_shape_str(idx, a, sizeof a));
    int tp = model_tp_size(&m->config);
    if (model_sequence_parallel(&m->config) && T % tp != 0)
        return bt_error("%s: idx %s has sequence length %lld, not divisible by parallel.tp=%d "
                        "(parallel.sequence_parallel splits the sequence across the tp ranks)",
                        arch, bt_shape_str(idx, a, sizeof a), (long long)T, tp);
    if (targets && !bt_same_shape(idx, targets))
        return bt_error("%s: targets %s must have the shape of idx %s", arch,
                        bt_shape_str(targets, b, sizeof b), bt_shape_str(idx, a, sizeof a));
    return BT_OK;
}

/* A later stage's input: the previous stage's float hidden state (B, T, C), under SP this rank's
 * (B, T/P, C), with T <= block_size; on the last stage targets NULL or (B, T) */
static bt_status check_hidden(const struct model *m, const bt_tensor *in,
                              const bt_tensor *targets) {
    const struct model_config *c = &m->config;
    const char *arch = arch_name(c->arch);
    char a[96], b[96];
    int64_t P = model_sequence_parallel(c) ? model_tp_size(c) : 1;
    if (in->ndim != 3 || bt_dtype_is_integer(in->dtype) || in->dtype == BT_BOOL ||
        in->shape[2] != c->n_embd || in->shape[0] < 1 || in->shape[1] < 1)
        return bt_error("%s: pipeline stage %d's input %s %s must be the previous stage's float "
                        "hidden state (batch, time%s, model.n_embd=%lld)",
                        arch, c->pp_stage, bt_dtype_name(in->dtype), bt_shape_str(in, a, sizeof a),
                        P > 1 ? "/tp" : "", (long long)c->n_embd);
    int64_t B = in->shape[0], T = in->shape[1] * P;
    if (T > c->block_size)
        return bt_error("%s: pipeline stage %d's input %s has sequence length %lld, more than "
                        "model.block_size=%lld",
                        arch, c->pp_stage, bt_shape_str(in, a, sizeof a), (long long)T,
                        (long long)c->block_size);
    if (targets && model_config_is_last_stage(c) &&
        (targets->ndim != 2 || targets->shape[0] != B || targets->shape[1] != T))
        return bt_error("%s: targets %s must be (%lld, %lld), the batch and sequence of pipeline "
                        "stage %d's input %s",
                        arch, bt_shape_str(targets, b, sizeof b), (long long)B, (long long)T,
                        c->pp_stage, bt_shape_str(in, a, sizeof a));
    return BT_OK;
}

/* logits (B, T, V), targets (B, T) or NULL: the mean cross-entropy over (B*T, V), or NULL without
 * error when there are no targets; *logits_out receives logits when not NULL. With tp_group of
 * P > 1, logits are this rank's vocabulary slice (B, T, V/P) and the loss is tp_cross_entropy's. */
static bt_tensor *finish_forward(bt_tensor *logits, bt_tensor *targets, struct comm *tp_group,
                                 bt_tensor **logits_out) {
    if (logits_out) *logits_out = logits;
    if (!logits || !targets) return NULL;
    /* logits (B, T, V) -> (B*T, V), targets (B, T) -> (B*T); V is V/P with a tp group */
    int64_t V = logits->shape[2];
    bt_tensor *flat_logits = bt_reshape(logits, BT_SHAPE(-1, V));
    bt_tensor *flat_targets = bt_reshape(targets, BT_SHAPE(-1));
    if (tp_group && comm_size(tp_group) > 1)
        return tp_cross_entropy(flat_logits, flat_targets, tp_group);
    return bt_cross_entropy(flat_logits, flat_targets);
}

bt_tensor *model_stage_forward(struct model *m, bt_tensor *in, bt_tensor *targets,
                               bt_tensor **logits) {
    if (logits) *logits = NULL;
    if (!m || !in) {
        const char *what = !m ? "model" : model_is_first_stage(m) ? "idx" : "input";
        if (!bt_has_error()) bt_error("model: forward: %s is NULL", what);
        return NULL;
    }
    const struct model_config *c = &m->config;
    bt_status st =
        model_config_is_first_stage(c) ? check_batch(m, in, targets) : check_hidden(m, in, targets);
    if (st != BT_OK) return NULL;
    if (model_config_is_last_stage(c) && targets && !logits && m->head && !m->head->bias) {
        m->hidden_only = true; /* the head and the loss as one op, without the logits */
        bt_tensor *h = m->forward(m, in);
        m->hidden_only = false;
        if (!h) return NULL;
        bt_scope_push(m->head->base.path); /* its errors name lm_head, as the linear's would */
        bt_tensor *loss =
            bt_linear_cross_entropy(bt_reshape(h, BT_SHAPE(-1, h->shape[2])), m->head->weight,
                                    bt_reshape(targets, BT_SHAPE(-1)));
        bt_scope_pop();
        return loss;
    }
    bt_tensor *out = m->forward(m, in);
    if (!model_config_is_last_stage(c)) return out; /* the hidden state for the next stage */
    return finish_forward(out, targets, model_tp_size(c) > 1 ? c->tp_group : NULL, logits);
}

bt_tensor *model_forward(struct model *m, bt_tensor *idx, bt_tensor *targets, bt_tensor **logits) {
    return model_stage_forward(m, idx, targets, logits);
}

/* ---- pipeline stages ---- */

bool model_is_first_stage(const struct model *m) {
    return m && model_config_is_first_stage(&m->config);
}

bool model_is_last_stage(const struct model *m) {
    return m && model_config_is_last_stage(&m->config);
}

bt_tensor *model_whole_only(const struct model *m, const char *what) {
    const struct model_config *c = &m->config;
    bt_error("%s: %s needs the whole model, not pipeline stage %d of %d (layers [%lld, %lld))",
             arch_name(c->arch), what, c->pp_stage, c->pp_stages, (long long)c->pp_layer_begin,
             (long long)c->pp_layer_end);
    return NULL;
}

bt_tensor *model_tied_embedding(const struct model *m) {
    if (!m || !m->config.tie_embeddings || !model_config_is_pipelined(&m->config)) return NULL;
    if (!model_is_first_stage(m) && !model_is_last_stage(m)) return NULL;
    return nn_get_parameter(m->root, m->config.arch == MODEL_GPT ? "transformer.wte.weight"
                                                                 : "model.embed_tokens.weight");
}

/* Parameters of one block, and those stage 0 and the last stage hold besides their blocks (the
 * counts of docs/models.md, full logical tensors). The last stage's copy of a tied embedding is
 * not counted: it is stage 0's tensor. */
static int64_t block_parameters(const struct model_config *c) {
    int64_t C = c->n_embd, F = c->ffn_hidden;
    if (c->arch == MODEL_GPT) return 4 * C * C + 2 * F * C + 2 * C + (c->bias ? 7 * C + F : 0);
    int64_t kv = c->n_kv_head * (C / c->n_head); /* NKV * hs */
    return 2 * C + 2 * C * C + 2 * kv * C + 3 * F * C;
}

static int64_t first_stage_extra(const struct model_config *c) {
    return c->vocab_size * c->n_embd + (c->arch == MODEL_GPT ? c->block_size * c->n_embd : 0);
}

static int64_t last_stage_extra(const struct model_config *c) {
    int64_t norm = c->arch == MODEL_GPT && c->bias ? 2 * c->n_embd : c->n_embd;
    return norm + (c->tie_embeddings ? 0 : c->vocab_size * c->n_embd);
}

/* Blocks stage s can take within a largest stage of `most` parameters, at least 1, at most L */
static int64_t blocks_within(int64_t most, int64_t extra, int64_t block, int64_t L) {
    int64_t n = most >= extra ? (most - extra) / block : 0;
    return n < 1 ? 1 : n > L ? L : n;
}

/* Stage s's extra parameters: the embeddings on the first, the norm and head on the last */
static int64_t stage_extra(const struct model_config *c, int s, int stages) {
    return (s == 0 ? first_stage_extra(c) : 0) + (s == stages - 1 ? last_stage_extra(c) : 0);
}

bt_status model_stage_layers(const struct model_config *c, int stages, int64_t *begin,
                             int64_t *end) {
    if (!c || !begin || !end)
        return bt_has_error() ? BT_ERR : bt_error("model: stage_layers: argument is NULL");
    struct model_config whole = *c;
    whole.pp_stages = whole.pp_stage = 0;
    if (check_config(&whole) != BT_OK) return BT_ERR;
    int64_t L = c->n_layer;
    if (stages < 1 || stages > L)
        return bt_error("model: %d pipeline stages for model.n_layer=%lld layers: expected 1 to "
                        "%lld (every stage needs a layer)",
                        stages, (long long)L, (long long)L);
    /* Water-filling: the smallest level `most` at which the stages, each taking the blocks that
     * keep it within `most` parameters (at least one), hold all L blocks (blocks are alike, so
     * only their count per stage matters). A stage whose single block exceeds it is at its
     * least possible size, and every largest stage is at most the optimum. lo: too low, hi: high
     * enough (L blocks on every stage). */
    int64_t block = block_parameters(c);
    int64_t lo = 0, hi = L * block + first_stage_extra(c) + last_stage_extra(c);
    if (stages == L) hi = 0; /* as many stages as blocks: one each */
    while (hi - lo > 1) {
        int64_t mid = lo + (hi - lo) / 2, held = 0;
        for (int s = 0; s < stages; s++)
            held += blocks_within(mid, stage_extra(c, s, stages), block, L);
        if (held >= L)
            hi = mid;
        else
            lo = mid;
    }
    /* every stage its count at hi-1 (they hold fewer than L), then the stages that take one more
     * at hi get it, first stages first, until all L are placed */
    int64_t placed = 0;
    for (int s = 0; s < stages; s++) {
        begin[s] = hi > 0 ? blocks_within(hi - 1, stage_extra(c, s, stages), block, L) : 1;
        placed += begin[s]; /* begin holds the counts until the last loop */
    }
    for (int s = 0; s < stages && placed < L; s++) {
        int64_t more = blocks_within(hi, stage_extra(c, s, stages), block, L) - begin[s];
        if (more > L - placed) more = L - placed;
        begin[s] += more;
        placed += more;
    }
    int64_t at = 0;
    for (int s = 0; s < stages; s++) {
        int64_t n = begin[s];
        begin[s] = at;
        end[s] = at += n;
    }
    return BT_OK;
}

/* ---- sequence parallelism ---- */

bt_tensor *model_sp_param(const struct model_config *c, bt_tensor *w) {
    return w && model_sequence_parallel(c) ? tp_copy(w, c->tp_group) : w;
}

bt_tensor *model_layernorm(const struct model_config *c, struct nn_layernorm *ln, bt_tensor *x) {
    if (!model_sequence_parallel(c)) return nn_layernorm_forward(ln, x);
    bt_scope_push(ln->base.path);
    bt_tensor *y =
        bt_layernorm(x, model_sp_param(c, ln->weight), model_sp_param(c, ln->bias), ln->eps);
    bt_scope_pop();
    return y;
}

bt_tensor *model_rmsnorm(const struct model_config *c, struct nn_rmsnorm *n, bt_tensor *x) {
    if (!model_sequence_parallel(c)) return nn_rmsnorm_forward(n, x);
    bt_scope_push(n->base.path);
    bt_tensor *y = bt_rmsnorm(x, model_sp_param(c, n->weight), n->eps);
    bt_scope_pop();
    return y;
}

int64_t model_sp_offset(const struct model_config *c, int64_t T) {
    if (!model_sequence_parallel(c)) return 0;
    return comm_rank(c->tp_group) * (T / comm_size(c->tp_group));
}

bt_tensor *model_dropout(const struct model_config *c, struct nn_dropout *d, bt_tensor *x) {
    if (!model_sequence_parallel(c) || !x || !d->base.training || d->p == 0.0)
        return nn_dropout_forward(d, x);
    bt_scope_push(d->base.path);
    /* the whole tensor's mask (scaled by 1/(1-p)), drawn as tp=1 draws it, then this rank's
     * slice of it: x * mask has the gradient grad * mask */
    int64_t shape[BT_MAX_DIMS];
    for (int k = 0; k < x->ndim; k++)
        shape[k] = x->shape[k];
    int P = comm_size(c->tp_group);
    shape[1] *= P;
    bt_tensor *mask = bt_dropout(bt_ones(x->ndim, shape, x->dtype, x->storage->device), d->p, true);
    bt_tensor *y = bt_mul(x, bt_narrow(mask, 1, comm_rank(c->tp_group) * x->shape[1], x->shape[1]));
    bt_scope_pop();
    return y;
}

void model_train(struct model *m, bool training) {
    if (m) nn_module_train(m->root, training);
}

bt_status model_parameters(const struct model *m, struct nn_param_list *out) {
    if (!m) {
        *out = (struct nn_param_list){0};
        return bt_has_error() ? BT_ERR : bt_error("model: parameters: model is NULL");
    }
    return nn_named_parameters(m->root, out);
}

int64_t model_num_parameters(const struct model *m) {
    struct nn_param_list l;
    if (!m || nn_named_parameters(m->root, &l) != BT_OK) return -1;
    int64_t n = 0;
    for (int64_t i = 0; i < l.count; i++) {
        struct nn_split s = nn_param_split(&l, i);
        n += bt_numel(l.tensors[i]) * (nn_split_is_cut(&s) ? s.parts : 1);
    }
    nn_param_list_free(&l);
    return n;
}

int64_t model_num_local_parameters(const struct model *m) {
    return m ? nn_num_parameters(m->root) : -1;
}

double model_flops_per_token(const struct model *m, int64_t T) {
    return m ? model_flops_per_token_of(&m->config, (double)model_num_parameters(m), T) : 0.0;
}

double model_flops_per_token_of(const struct model_config *c, double num_parameters, int64_t T) {
    double N = num_parameters;
    if (c->arch == MODEL_GPT) N -= (double)(c->block_size * c->n_embd); /* transformer.wpe */
    /* PaLM appendix B: 6N for the matmuls with weights, 12*L*C*T for q k^T and (att) v */
    return 6.0 * N + 12.0 * (double)c->n_layer * (double)c->n_embd * (double)T;
}
