/* Which checkpoint a run resumes from, and which config changes a resume allows (resume.h). */
#include "launch/resume.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "data/checkpoint.h"

/* Keys whose change would make the checkpoint's state meaningless for this run: the model's
 * shapes, what the optimizer state is, and what the data position counts. */
static const char *const fixed_keys[] = {
    "model.arch",    "model.vocab_size",     "model.block_size", "model.n_layer",
    "model.n_head",  "model.n_kv_head",      "model.n_embd",     "model.ffn_hidden",
    "model.bias",    "model.tie_embeddings", "optimizer.name",   "train.seed",
    "train.seq_len", "data.shuffle",
};

/* Keys that differ between runs by nature, never reported. */
static const char *const ignored_keys[] = {"checkpoint.resume", "model.init_from"};

static bool listed(const char *key, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], key) == 0) return true;
    return false;
}

bt_status resume_find(const struct braid_config *cfg, char *path, size_t size, bool *found) {
    const char *resume = cfg->checkpoint.resume, *dir = cfg->checkpoint.dir;
    *found = false;
    if (strcmp(resume, "none") == 0) return BT_OK;
    if (strcmp(resume, "auto") != 0) {
        if (ckpt_resolve(resume, path, size) != BT_OK) return bt_error_prefix("checkpoint.resume");
        *found = true;
        return BT_OK;
    }
    char pointer[CFG_STR + 16];
    struct stat st;
    snprintf(pointer, sizeof pointer, "%s/latest", dir);
    if (stat(pointer, &st) != 0 && errno == ENOENT) return BT_OK; /* nothing saved yet */
    if (ckpt_resolve(dir, path, size) != BT_OK) return bt_error_prefix("checkpoint.resume=auto");
    *found = true;
    return BT_OK;
}

bt_status resume_check_config(const struct braid_config *cfg, const char *stored_yaml,
                              const char *ckpt_path) {
    struct braid_config old;
    char label[CFG_STR + 32];
    snprintf(label, sizeof label, "checkpoint %s: /config", ckpt_path);
    cfg_defaults(&old);
    if (cfg_load_text(&old, stored_yaml, label) != BT_OK) return BT_ERR;
    const size_t n_fixed = sizeof fixed_keys / sizeof fixed_keys[0];
    const size_t n_ignored = sizeof ignored_keys / sizeof ignored_keys[0];
    for (int k = 0; k < CFG_N_KEYS; k++) {
        char key[64], was[CFG_STR], now[CFG_STR];
        cfg_key_name(k, key, sizeof key);
        cfg_value_text(&old, k, was, sizeof was);
        cfg_value_text(cfg, k, now, sizeof now);
        if (strcmp(was, now) == 0 || listed(key, ignored_keys, n_ignored)) continue;
        if (listed(key, fixed_keys, n_fixed))
            return bt_error("checkpoint.resume: %s was saved with %s=%s, this run has %s=%s: a "
                            "resumed run keeps the model's shape, the optimizer and the data "
                            "stream%s",
                            ckpt_path, key, was, key, now,
                            strncmp(key, "model.", 6) == 0
                                ? ""
                                : " (to start a new run from its weights instead, set "
                                  "model.init_from to it and checkpoint.resume=none)");
        printf("resume: %s: %s -> %s\n", key, was, now);
    }
    return BT_OK;
}
