#!/bin/bash
# issue 11: fine-tune both cross-entropy captioners (baseline and LRP; xe with seeds 0 1 2, scst with seed 0) and
# evaluate every model on the test split (beam 3, LRP grounding); one worker per captioner, one thread each
cd /work/main && source .venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
S=runs/exp11/scenes
DATA="--split-file $S/dataset_scenes.json --image-root $S"
worker() {
  m=$1
  for objective in ${OBJECTIVES:-xe scst}; do
    seeds="0 1 2"; [ $objective = scst ] && seeds="0"
    for seed in $seeds; do
      for method in baseline lrp; do
        name=$method-$objective-$m-s$seed
        [ -f runs/exp11/eval-$name/metrics_test_beam3.json ] && continue
        capxai finetune --checkpoint runs/exp11/ce-$m-s0/best.pt $DATA --out runs/exp11/ft-$name \
          --method $method --objective $objective --seed $seed || { echo "FAILED finetune $name"; continue; }
        capxai evaluate --checkpoint runs/exp11/ft-$name/best.pt $DATA --beam-size 3 --out runs/exp11/eval-$name \
          --overwrite --explanations lrp --no-ablation || echo "FAILED evaluate $name"
      done
    done
  done
}
for m in ${MODELS:-adaptive multihead}; do worker $m > runs/exp11/ft-$m.log 2>&1 & done
wait
