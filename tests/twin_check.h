/* Helpers for the tests that compare a tensor-parallel model (or layer) with its single-rank twin
 * on every rank (tests/test_gpt_tp.c, test_llama_tp.c, test_checkpoint_tp.c, test_tp.c): the same
 * tiny models and token batches everywhere, and assertions that name the rank. The tensor-parallel
 * group is the whole world. Failures end the running Check test (see tests/mpi_test.h). */
#ifndef BRAID_TESTS_TWIN_CHECK_H
#define BRAID_TESTS_TWIN_CHECK_H

#include <check.h>
#include <stdbool.h>
#include <stdint.h>

#include "comm/comm.h"
#include "core/tensor.h"
#include "models/model.h"

/* this process's place in the world (the tp group of the model tests) */
int twin_world_size(void);
int twin_world_rank(void);

/* ---- models and batches ---- */

/* The tiny GPT of the TP tests: 2 layers, tanh GELU, no dropout, norm eps 1e-5; the sizes, biases,
 * tying and tp group as given (NULL: the single-rank twin). */
struct model_config twin_tiny_gpt(int64_t vocab_size, int64_t block_size, int64_t n_head,
                                  int64_t n_embd, int64_t ffn_hidden, bool bias, bool tied,
                                  struct comm *tp_group);
/* model_create that fails the test (naming the rank and the error) when it returns NULL */
struct model *twin_model_create(const struct model_config *cfg, uint64_t seed);
/* model_create must refuse cfg with exactly the message `want` (then cleared) */
void twin_assert_create_fails(const struct model_config *cfg, const char *want);

/* (batch, n) token ids of positions t0..t0+n-1, the same on every rank:
 * (b * 7 + t * 3 + t * t + shift) % vocab_size */
bt_tensor *twin_tokens_at(int64_t batch, int64_t t0, int64_t n, int64_t vocab_size, int shift);
/* (batch, T) token ids of positions 0..T-1: twin_tokens_at(batch, 0, T, vocab_size, shift) */
bt_tensor *twin_tokens(int64_t batch, int64_t T, int64_t vocab_size, int shift);

/* The two models' parameter lists, filled into pf (full) and pt (tp): the same names in the same
 * order. */
void twin_params_of(struct model *full, struct model *tp, struct nn_param_list *pf,
                    struct nn_param_list *pt);

/* ---- comparisons ---- */

/* [start, start + n) of t along dim: a view without autograd */
bt_tensor *twin_slice(bt_tensor *t, int dim, int64_t start, int64_t n);
/* the largest |element| of t */
double twin_max_abs(const bt_tensor *t);

/* |got - want| <= tol * |want| */
void twin_assert_rel(const char *what, double got, double want, double tol);
/* got == want element by element (logical order; the same dtype and shape), to tol * scale */
void twin_assert_close_scaled(const char *what, const bt_tensor *got, const bt_tensor *want,
                              double tol, double scale);
/* got == want: bitwise (tol < 0) or to tol times want's largest magnitude */
void twin_assert_close(const char *what, const bt_tensor *got, const bt_tensor *want, double tol);

/* Compares this rank's tensor `got` of parameter `name` with the twin's `full`, to `tol` times
 * full's largest magnitude: the same shape means replicated (the whole tensor); otherwise got is
 * rank r's block of P along the dim that differs, or, for a tensor that fuses n_blocks equal parts
 * along that dim (GPT's c_attn: q, k and v), the r-th block of each part (parallel/tp.h). */
void twin_assert_slice_close(const char *name, bt_tensor *got, bt_tensor *full, int n_blocks,
                             double tol);

/* a replicated parameter's gradient is bit-identical on every rank of the world */
void twin_assert_same_on_every_rank(const char *name, const bt_tensor *grad);

#endif
