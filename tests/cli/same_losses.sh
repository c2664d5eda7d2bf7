# Sourced by tests/cli/dp.sh and tests/cli/launch.sh: compares two runs' losses. Needs $out (the
# runs' parent directory) and a fail() function.

# same_losses A B [FROM_STEP]: every loss and val_loss of rows >= FROM_STEP agree to 1e-5
same_losses() {
  local from=${3:-1}
  paste -d' ' <(awk -v f="$from" -F'[:,]' '$2 >= f' "$out/$1/metrics.jsonl") \
    <(awk -v f="$from" -F'[:,]' '$2 >= f' "$out/$2/metrics.jsonl") | awk '
    { n = split($0, w, " ")
      a_loss = ""; b_loss = ""; a_val = ""; b_val = ""; half = 0
      for (i = 1; i <= n; i++) {
        if (w[i] == "{\"step\":") half++
        if (w[i] == "\"loss\":") { v = w[i + 1]; sub(",", "", v); if (half == 1) a_loss = v; else b_loss = v }
        if (w[i] == "\"val_loss\":") { v = w[i + 1]; sub("}", "", v); if (half == 1) a_val = v; else b_val = v }
      }
      if (a_loss == "" || b_loss == "") { print "row without loss: " $0; bad = 1; exit }
      d = (a_loss - b_loss) / b_loss; if (d < 0) d = -d; if (d > worst) worst = d
      if ((a_val == "") != (b_val == "")) { print "val_loss in one run only: " $0; bad = 1; exit }
      if (a_val != "") { d = (a_val - b_val) / b_val; if (d < 0) d = -d; if (d > worst) worst = d }
      rows++ }
    END { if (bad) exit 1
          printf "%d rows, largest relative difference %.3g\n", rows, worst
          if (rows == 0 || worst > 1e-5) exit 1 }' || fail "losses of $1 and $2 differ (above)"
}
