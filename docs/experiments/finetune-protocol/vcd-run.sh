#!/usr/bin/env bash
# Issue 35: VCD against plain beam search on run.sh's start model (test split, beam 3), and the table of the two.
set -eu
cd "$(dirname "$0")/../.."
OUT=runs/auto
PY=.venv/bin/python
COMMON="--checkpoint $OUT/adaptive/best.pt --split-file $OUT/scenes/dataset_scenes.json --image-root $OUT/scenes"
$PY -m capxai.cli evaluate $COMMON --out $OUT/eval-plain --overwrite
$PY -m capxai.cli evaluate $COMMON --out $OUT/eval-vcd --vcd 1:0.1 --overwrite
$PY -m capxai.cli finetune-table --row adaptive/baseline-decoding=$OUT/eval-plain --row adaptive/vcd-decoding=$OUT/eval-vcd \
  --out $OUT/table --overwrite
