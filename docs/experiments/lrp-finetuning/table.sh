#!/bin/bash
# issue 11: the results table from the evaluations of runs/exp11
cd /work/main && source .venv/bin/activate
rows=()
for m in adaptive multihead; do
  E=runs/exp11
  rows+=(--row "$m/xe=$E/eval-ce-$m-s0")
  for v in baseline-xe lrp-xe; do
    method=${v%-*}; objective=${v#*-}
    rows+=(--row "$m/$v=$E/eval-$method-$objective-$m-s0,$E/eval-$method-$objective-$m-s1,$E/eval-$method-$objective-$m-s2")
  done
  for v in baseline-scst lrp-scst; do
    method=${v%-*}; objective=${v#*-}
    [ -f $E/eval-$method-$objective-$m-s0/metrics_test_beam3.json ] && rows+=(--row "$m/$v=$E/eval-$method-$objective-$m-s0")
  done
done
capxai finetune-table "${rows[@]}" --out runs/exp11/table --overwrite
