#!/usr/bin/env bash
# usage: profile.sh CASE BRAID REPO_DIR OUT_DIR
# BRAID_PROFILE=1 braid train (docs/performance.md): the per-op table at the end of the run.
#   one_rank  10 steps: the table counts the 7 steps after the warm-up, has forward and backward
#             linear rows and the loop's parts, its rows add up to its ms a step, and the losses
#             are those of the same run without profiling
#   dp2       on 2 ranks the table is printed once (rank 0's) and the run ends cleanly
#   mfu_peak  BRAID_MFU_PEAK sets the peak MFU is relative to; one far below what training reaches
#             is measured again at the first log row (said once, on stdout), and no logged MFU is
#             above 100%; the losses are the plain run's
set -euo pipefail
source "$(dirname "$0")/tiny_job.sh"

profile_table() { sed -n '/^profile: /,$p' "$out/$1.log"; }

case $case_name in
  one_rank)
    run plain 1 --train.max_steps=10
    BRAID_PROFILE=1 run prof 1 --train.max_steps=10
    ! grep -q '^profile: ' "$out/plain.log" || fail "a run without BRAID_PROFILE printed a profile"
    profile_table prof > "$out/table"
    grep -q '^profile: 7 steps, ' "$out/table" || fail "no '7 steps' header: $(head -2 "$out/table")"
    # 2 layers x 4 linear layers, the MLP's first one with its GELU (linear_gelu); the LM head
    # runs with the loss (linear_cross_entropy)
    for row in 'forward +linear +6[.]0 ' 'backward +linear +6[.]0 ' 'forward +linear_gelu +2[.]0 ' \
      'backward +linear_gelu +2[.]0 ' 'forward +attention ' \
      'forward +linear_cross_entropy +1[.]0 ' 'backward +linear_cross_entropy +1[.]0 ' \
      'step +optimizer +1[.]0 ' 'step +clip_grad_norm ' 'step +data '; do
      grep -Eq "^  $row" "$out/table" || fail "no row /$row/ in: $(cat "$out/table")"
    done
    awk 'NR == 1 { sub(/ ms a step.*/, ""); total = $NF } NR > 2 { sum += $(NF - 1) }
         END { d = sum - total; if (d < 0) d = -d
               printf "rows %.2f ms, header %.2f ms\n", sum, total
               exit !(total > 0 && d <= 0.01 * total + 0.05) }' "$out/table" ||
      fail "the rows do not add up to the header"
    same_losses plain prof
    ;;
  dp2)
    BRAID_PROFILE=1 run prof 2 --parallel.dp=2 --train.max_steps=8
    test "$(grep -c '^profile: ' "$out/prof.log")" -eq 1 || fail "expected one profile table"
    grep -q '^profile: 5 steps, ' "$out/prof.log" || fail "no '5 steps' header"
    ;;
  mfu_peak)
    run plain 1 --train.max_steps=6
    BRAID_MFU_PEAK=0.001 run low 1 --train.max_steps=6
    grep -q 'sgemm peak 0.0 GFLOP/s (BRAID_MFU_PEAK)' "$out/low.log" ||
      fail "no BRAID_MFU_PEAK banner: $(head -20 "$out/low.log")"
    test "$(grep -c '^mfu: training ran above the matmul peak of 0.0 GFLOP/s' "$out/low.log")" -eq 1 ||
      fail "expected one re-measure line: $(grep -i mfu "$out/low.log")"
    awk -F'"mfu": ' 'NF > 1 { split($2, v, ","); if (v[1] + 0 > 1.0 || v[1] + 0 <= 0) bad = 1 }
         END { exit bad }' "$out/low/metrics.jsonl" || fail "an mfu out of (0, 1]: $(cat "$out/low/metrics.jsonl")"
    same_losses plain low
    BRAID_MFU_PEAK=300 run high 1 --train.max_steps=2
    grep -q 'sgemm peak 300.0 GFLOP/s (BRAID_MFU_PEAK)' "$out/high.log" || fail "peak not taken"
    ! grep -q '^mfu: ' "$out/high.log" || fail "measured again below the peak"
    ;;
  *) fail "unknown case $case_name" ;;
esac
echo "ok: $case_name"
