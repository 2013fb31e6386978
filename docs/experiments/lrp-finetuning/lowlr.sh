#!/bin/bash
# issue 11, follow-up: the same xe fine-tuning with a 10x lower learning rate (5e-5), seed 0, both captioners
cd /work/main && source .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
S=runs/exp11/scenes
DATA="--split-file $S/dataset_scenes.json --image-root $S"
for m in adaptive multihead; do
  for method in baseline lrp; do
    name=$method-xe-lr5e-5-$m-s0
    [ -f runs/exp11/eval-$name/metrics_test_beam3.json ] && continue
    capxai finetune --checkpoint runs/exp11/ce-$m-s0/best.pt $DATA --out runs/exp11/ft-$name --method $method --lr 5e-5 --seed 0 || continue
    capxai evaluate --checkpoint runs/exp11/ft-$name/best.pt $DATA --beam-size 3 --out runs/exp11/eval-$name --overwrite --explanations lrp --no-ablation
  done
done
