#!/usr/bin/env bash
# Issue 38, part 6: a LLaVA-style VLM trained on the scenes, evaluated with hallucinated-word detection.
set -eu
cd "$(dirname "$0")/../.."
OUT=runs/vlm-scenes
PY=.venv/bin/python
[ -f $OUT/scenes/dataset_scenes.json ] || $PY -m capxai.cli data scenes --out $OUT/scenes --train 3000 --val 200 --test 500 --size 64 --seed 5
$PY -m capxai.cli train --model hf-llava --split-file $OUT/scenes/dataset_scenes.json --image-root $OUT/scenes \
  --out $OUT/${MODEL:-model} --image-size 64 --hidden 64 --heads 2 --layers 2 --dropout 0.0 --lr 3e-3 --batch-size 32 \
  --epochs ${EPOCHS:-6} --seed 0
$PY -m capxai.cli evaluate --checkpoint $OUT/${MODEL:-model}/best.pt --split-file $OUT/scenes/dataset_scenes.json \
  --image-root $OUT/scenes --explanations lrp,gradient-x-input,gradcam,attention --explain-limit 200 --no-ablation \
  --out $OUT/${EVAL:-eval} --overwrite
