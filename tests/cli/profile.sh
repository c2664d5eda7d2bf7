#!/usr/bin/env bash
# usage: profile.sh CASE BRAID REPO_DIR OUT_DIR
# BRAID_PROFILE=1 braid train (docs/performance.md): the per-op table at the end of the run.
#   one_rank  10 steps: the table counts the 7 steps after the warm-up, has forward and backward
#             linear rows and the loop's parts, its rows add up to its ms a step, and the losses
#             are those of the same run without profiling
#   dp2       on 2 ranks the table is printed once (rank 0's) and the run ends cleanly
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
  *) fail "unknown case $case_name" ;;
esac
echo "ok: $case_name"
