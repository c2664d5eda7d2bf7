/* What the subcommands share about a job: the model a config section describes. */
#ifndef BRAID_LAUNCH_JOB_H
#define BRAID_LAUNCH_JOB_H

#include "launch/config.h"
#include "models/model.h"

/* The model config of a config's `model` section (after cfg_finalize). */
struct model_config job_model_config(const struct cfg_model *m);

#endif
