#!/bin/bash
# issue 11: scenes + the cross-entropy captioners (demo recipe), one thread each, both models at once
set -e
cd /work/main && source .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
S=runs/exp11/scenes
[ -f $S/dataset_scenes.json ] || capxai data scenes --out $S --train 8000 --val 1000 --test 2000 --seed 0
run() {
  m=$1
  capxai train --split-file $S/dataset_scenes.json --image-root $S --out runs/exp11/ce-$m-s0 --model $m --epochs 6 --seed 0 \
    --hidden 128 --attention-dim 64 --dropout 0.3 --lr 1e-3 --batch-size 32
  capxai evaluate --checkpoint runs/exp11/ce-$m-s0/best.pt --split-file $S/dataset_scenes.json --image-root $S --beam-size 3 --out runs/exp11/eval-ce-$m-s0 --overwrite --explanations lrp --no-ablation
}
run adaptive > runs/exp11/ce-adaptive.log 2>&1 &
run multihead > runs/exp11/ce-multihead.log 2>&1 &
wait
