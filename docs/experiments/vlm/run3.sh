#!/usr/bin/env bash
# Issue 38, part 6, third run: a second training seed of run 2's VLM, and both seeds' detection on all 500 test images.
set -eu
cd "$(dirname "$0")/../.."
OUT=runs/vlm-scenes
PY=.venv/bin/python
$PY -m capxai.cli train --model hf-llava --split-file $OUT/scenes6k/dataset_scenes.json --image-root $OUT/scenes6k \
  --out $OUT/model6k-seed1 --image-size 64 --hidden 64 --heads 2 --layers 2 --dropout 0.0 --lr 3e-3 --batch-size 32 \
  --epochs 25 --seed 1
for MODEL in model6k model6k-seed1; do
  $PY -m capxai.cli evaluate --checkpoint $OUT/$MODEL/best.pt --split-file $OUT/scenes6k/dataset_scenes.json \
    --image-root $OUT/scenes6k --explanations lrp,gradient-x-input,gradcam,attention --explain-limit 500 --no-ablation \
    --out $OUT/eval500-$MODEL --overwrite
done
