#!/bin/bash
# usage: run.sh OUTDIR [extra run options]; a tiny pipeline whose results are compared bit for bit
set -e
OUT=$1; shift
PY=/work/main/.venv/bin/python
cd ${CODE:-/work/main}
rm -rf $OUT; mkdir -p $OUT
$PY -m capxai data scenes --out $OUT/scenes --train 48 --val 10 --test 16 --seed 2 >/dev/null
D="--split-file $OUT/scenes/dataset_scenes.json --image-root $OUT/scenes"
$PY -m capxai train $D --out $OUT/model --hidden 16 --attention-dim 8 --heads 2 --min-count 1 --batch-size 8 --epochs 2 --captions-per-image 2 --dropout 0.3 "$@" >/dev/null 2>&1
$PY -m capxai finetune --checkpoint $OUT/model/best.pt $D --out $OUT/ft --method lrp --epochs 1 "$@" >/dev/null 2>&1
$PY -m capxai evaluate --checkpoint $OUT/model/best.pt $D --out $OUT/eval --explanations all --explain-limit 8 --explain-batch-size 4 "$@" >/dev/null 2>&1
$PY -m capxai explain --checkpoint $OUT/model/best.pt --split-file $OUT/scenes/dataset_scenes.json --limit 6 --shard-size 4 --method lrp --out $OUT/explain "$@" >/dev/null 2>&1
