#!/usr/bin/env bash
# usage: pp.sh CASE BRAID REPO_DIR OUT_DIR
# Pipeline-parallel `braid train` under mpirun (docs/pp.md), one CASE per CTest test, on the tiny
# shakespeare_char job of tiny_job.sh made 4 layers deep with 4 heads (dropout 0.1, shuffling on,
# vocabulary padded to 68 so that tp=4 divides it). Losses (train and val) are compared with a
# relative tolerance of 1e-5 over 12 steps against one rank with the same global batch:
#   pp2_1f1b         pp=2, 1F1B, 4 micro-batches == one rank with grad_accum=4
#   pp2_gpipe        the same with GPipe
#   untied           pp=2 with an untied LM head
#   explicit_split   pp=2 with parallel.stage_layers="3,1" (stage 0 holds blocks 0-2)
#   interleaved      pp=2 with 2 virtual stages per rank (interleaved 1F1B), tied and untied
#   layouts          the 3-D invariance: dp4, tp4, pp4, dp2×tp2, dp2×pp2, tp2×pp2 on 4 ranks
#   grid8            dp2×tp2×pp2 on 8 ranks (ZeRO-1, sequence parallel) == one rank
#   resume_tp2pp2    a tp2×pp2 checkpoint resumed at dp=4 and at one rank continues the losses
#   stage_killed     a stage killed with SIGKILL mid-run ends the job non-zero within 30 s (its
#                    neighbour does not wait for it forever)
set -euo pipefail
source "$(dirname "$0")/tiny_job.sh" "$@"
job+=(--model.vocab_size=68 --model.n_layer=4 --model.n_head=4 --train.eval_every=4)

case $case_name in
pp2_1f1b)
  run single 1 --train.max_steps=12 --train.grad_accum=4
  run pp2 2 --train.max_steps=12 --train.grad_accum=4 --parallel.pp=2
  grep -q "pipeline parallel: pp=2, schedule 1f1b, 4 micro-batches" "$out/pp2.log" ||
    fail "no pp banner"
  test "$(grep -o 'model: gpt, [0-9]* parameters' "$out/single.log")" = \
    "$(grep -o 'model: gpt, [0-9]* parameters' "$out/pp2.log")" || fail "parameter counts differ"
  same_losses single pp2
  ;;
pp2_gpipe)
  run single 1 --train.max_steps=12 --train.grad_accum=4
  run gpipe 2 --train.max_steps=12 --train.grad_accum=4 --parallel.pp=2 --parallel.schedule=gpipe
  same_losses single gpipe
  ;;
untied)
  run single 1 --train.max_steps=12 --train.grad_accum=2 --model.tie_embeddings=false
  run pp2 2 --train.max_steps=12 --train.grad_accum=2 --model.tie_embeddings=false --parallel.pp=2
  same_losses single pp2
  ;;
explicit_split)
  run single 1 --train.max_steps=12 --train.grad_accum=2
  run split 2 --train.max_steps=12 --train.grad_accum=2 --parallel.pp=2 \
    --parallel.stage_layers=3,1
  grep -q "stage 0 holds layers \[0, 3)" "$out/split.log" || fail "the split was not used"
  same_losses single split
  ;;
interleaved)
  run single 1 --train.max_steps=12 --train.grad_accum=4
  run inter 2 --train.max_steps=12 --train.grad_accum=4 --parallel.pp=2 \
    --parallel.virtual_stages=2
  grep -q "stage 0 holds layers \[0, 1) and \[2, 3) (2 virtual stages per rank, interleaved)" \
    "$out/inter.log" || fail "no interleaving banner: $(grep pipeline "$out/inter.log")"
  same_losses single inter
  run untied_single 1 --train.max_steps=12 --train.grad_accum=4 --model.tie_embeddings=false
  run untied_inter 2 --train.max_steps=12 --train.grad_accum=4 --parallel.pp=2 \
    --parallel.virtual_stages=2 --model.tie_embeddings=false --parallel.dp=1
  same_losses untied_single untied_inter
  ;;
layouts)
  run single 1 --train.max_steps=12 --train.grad_accum=4
  run dp4 4 --train.max_steps=12 --train.grad_accum=1 --parallel.dp=4
  run tp4 4 --train.max_steps=12 --train.grad_accum=4 --parallel.tp=4
  run pp4 4 --train.max_steps=12 --train.grad_accum=4 --parallel.pp=4
  run dp2tp2 4 --train.max_steps=12 --train.grad_accum=2 --parallel.dp=2 --parallel.tp=2
  run dp2pp2 4 --train.max_steps=12 --train.grad_accum=2 --parallel.dp=2 --parallel.pp=2 \
    --parallel.zero=1
  run tp2pp2 4 --train.max_steps=12 --train.grad_accum=4 --parallel.tp=2 --parallel.pp=2 \
    --parallel.sequence_parallel=true
  for layout in dp4 tp4 pp4 dp2tp2 dp2pp2 tp2pp2; do
    echo -n "$layout: "
    same_losses single "$layout"
  done
  ;;
grid8)
  run single 1 --train.max_steps=12 --train.grad_accum=4
  run grid 8 --train.max_steps=12 --train.grad_accum=2 --parallel.dp=2 --parallel.tp=2 \
    --parallel.pp=2 --parallel.zero=1 --parallel.sequence_parallel=true
  same_losses single grid
  ;;
resume_tp2pp2)
  run straight 1 --train.max_steps=16 --train.grad_accum=4
  run to_dp4 4 --train.max_steps=8 --train.grad_accum=4 --parallel.tp=2 --parallel.pp=2
  cp -r "$out/to_dp4" "$out/to_one"
  run to_dp4 4 --train.max_steps=16 --train.grad_accum=1 --parallel.dp=4
  run to_one 1 --train.max_steps=16 --train.grad_accum=4
  grep -q "^resumed from .*step_00000008.h5: step 8" "$out/to_dp4.log" || fail "did not resume"
  same_losses straight to_dp4 9
  same_losses straight to_one 9
  ;;
stage_killed)
  kill_one_rank 2 --parallel.pp=2 --train.grad_accum=4
  ;;
*)
  fail "unknown case $case_name"
  ;;
esac
