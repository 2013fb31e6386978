#!/usr/bin/env bash
# Issue 35, --threshold auto on a real (small) start: scenes, an adaptive captioner trained 8 epochs with the demo's
# recipe, then gated fine-tuning with the threshold chosen on validation.
set -eu
cd "$(dirname "$0")/../.."
OUT=runs/auto
PY=.venv/bin/python
[ -f $OUT/scenes/dataset_scenes.json ] || $PY -m capxai.cli data scenes --out $OUT/scenes --train 3000 --val 300 --test 600 --seed 7
$PY -m capxai.cli train --split-file $OUT/scenes/dataset_scenes.json --image-root $OUT/scenes --out $OUT/adaptive \
  --hidden 128 --attention-dim 64 --dropout 0.3 --lr 1e-3 --batch-size 32 --captions-per-image 2 --epochs 8 --seed 0
$PY -m capxai.cli finetune --checkpoint $OUT/adaptive/best.pt --split-file $OUT/scenes/dataset_scenes.json \
  --image-root $OUT/scenes --out $OUT/gated-auto --method gated --threshold auto --epochs 1 --captions-per-image 2
