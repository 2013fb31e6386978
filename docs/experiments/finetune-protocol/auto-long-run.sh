#!/usr/bin/env bash
# Issue 35: --threshold auto on a longer start (the demo's scenes size, 14 epochs), where the gate once helped.
set -eu
cd "$(dirname "$0")/../.."
OUT=runs/auto-long
PY=.venv/bin/python
[ -f $OUT/scenes/dataset_scenes.json ] || $PY -m capxai.cli data scenes --out $OUT/scenes --train 8000 --val 1000 --test 2000
$PY -m capxai.cli train --split-file $OUT/scenes/dataset_scenes.json --image-root $OUT/scenes --out $OUT/adaptive \
  --hidden 128 --attention-dim 64 --dropout 0.3 --lr 1e-3 --batch-size 32 --captions-per-image 2 --epochs 14 --seed 0
$PY -m capxai.cli finetune --checkpoint $OUT/adaptive/best.pt --split-file $OUT/scenes/dataset_scenes.json \
  --image-root $OUT/scenes --out $OUT/gated-auto --method gated --threshold auto --epochs 1 --captions-per-image 2
