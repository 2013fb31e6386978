#!/usr/bin/env bash
# Issue 35: the long start's baseline fine-tuning, the gate at the threshold auto chose (0.3) and at 0.5 (issue 23's
# hand choice on a start like this), on the test split; then the table.
set -eu
cd "$(dirname "$0")/../.."
OUT=runs/auto-long
PY=.venv/bin/python
for ARM in baseline gated-0.3 gated-0.5; do
  $PY -m capxai.cli evaluate --checkpoint $OUT/gated-auto/threshold-choice/$ARM/best.pt \
    --split-file $OUT/scenes/dataset_scenes.json --image-root $OUT/scenes --out $OUT/eval-$ARM --overwrite
done
$PY -m capxai.cli finetune-table --row adaptive/baseline-xe=$OUT/eval-baseline --row adaptive/gatedauto03-xe=$OUT/eval-gated-0.3 \
  --row adaptive/gated05-xe=$OUT/eval-gated-0.5 --out $OUT/table --overwrite
