#!/usr/bin/env bash
# Issue 38, part 6, second run: the same LLaVA-style VLM on twice the scenes (6000 training images), 25 epochs.
set -eu
cd "$(dirname "$0")/../.."
OUT=runs/vlm-scenes
PY=.venv/bin/python
[ -f $OUT/scenes6k/dataset_scenes.json ] || $PY -m capxai.cli data scenes --out $OUT/scenes6k --train 6000 --val 200 --test 500 --size 64 --seed 5
$PY -m capxai.cli train --model hf-llava --split-file $OUT/scenes6k/dataset_scenes.json --image-root $OUT/scenes6k \
  --out $OUT/model6k --image-size 64 --hidden 64 --heads 2 --layers 2 --dropout 0.0 --lr 3e-3 --batch-size 32 \
  --epochs 25 --seed 0
$PY -m capxai.cli evaluate --checkpoint $OUT/model6k/best.pt --split-file $OUT/scenes6k/dataset_scenes.json \
  --image-root $OUT/scenes6k --explanations lrp,gradient-x-input,gradcam,attention --explain-limit 200 --no-ablation \
  --out $OUT/eval6k --overwrite
