/* What the subcommands share about a job: the vocabulary size, what this build can run, the model
 * a config section describes. */
#ifndef BRAID_LAUNCH_JOB_H
#define BRAID_LAUNCH_JOB_H

#include "launch/config.h"
#include "models/model.h"

/* model.vocab_size 0: takes it from the tokenizer.yaml that braid prep wrote beside data.train's
 * shards; an error naming the file and the way out when there is none. */
bt_status job_resolve_vocab_size(struct braid_config *cfg);

/* Refuses, naming the key, what this build or machine cannot run: the CUDA device without one,
 * bfloat16 on the cpu. Call after cfg_finalize. */
bt_status job_check_supported(const struct braid_config *cfg);
/* BT_OK when a CUDA device can be used; else one error starting with `what` (e.g.
 * "train.device=cuda"): braid built without CUDA, or no device visible (with the reason). */
bt_status job_check_cuda(const char *what);

/* The model config of a config's `model` section (after cfg_finalize). */
struct model_config job_model_config(const struct cfg_model *m);

#endif
