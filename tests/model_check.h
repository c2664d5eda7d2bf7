/* Helpers for the single-process model tests (tests/test_models.c, test_pp_model.c): the tiny GPT
 * and LLaMA configs they share, and model_create that must succeed or must fail with a message.
 * Failures end the running Check test. */
#ifndef BRAID_TESTS_MODEL_CHECK_H
#define BRAID_TESTS_MODEL_CHECK_H

#include <check.h>
#include <stdbool.h>
#include <stdint.h>

#include "models/model.h"

/* GPT: V and L as given, block 8, NH 2, C 8, F 32, tanh GELU, no dropout, norm eps 1e-5 */
struct model_config model_check_tiny_gpt(bool bias, bool tied, int64_t vocab_size, int64_t n_layer);
/* LLaMA: V and L as given, block 8, NH 4, NKV 2 (grouped-query), C 16 (hs 4), F 24, no dropout,
 * norm eps 1e-6, rope theta 10000 */
struct model_config model_check_tiny_llama(bool tied, int64_t vocab_size, int64_t n_layer);

/* model_create that fails the test (naming the error) when it returns NULL */
struct model *model_check_create(const struct model_config *cfg, uint64_t seed);
/* model_create must refuse c with an error containing `message` (then cleared) */
void model_check_create_fails(struct model_config c, const char *message);

#endif
