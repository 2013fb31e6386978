#!/bin/bash
# Screen of the fine-tuning methods (issue 23) on one captioner and one seed: each arm fine-tunes the same start
# (a cross-entropy model trained to a plateau) for EPOCHS epochs, then its captions of the test split are scored
# with plain beam search and with explanation-guided decoding (guided-decoding/screen.py, one json line each).
# Usage: screen.sh START_FOLDER CAPTIONER SEED EPOCHS OUT.jsonl ARM...   (ARM: name:method[:options,comma,separated])
set -e
start=$1 captioner=$2 seed=$3 epochs=$4 out=$5; shift 5
data="--split-file runs/demo/scenes/dataset_scenes.json --image-root runs/demo/scenes"
for arm in "$@"; do
  name=${arm%%:*}; rest=${arm#*:}; method=${rest%%:*}; options=""
  [ "$rest" != "$method" ] && options=$(echo "${rest#*:}" | tr ',' ' ')
  folder=runs/issue23/ft-$captioner-$name-s$seed
  echo "== $name ($method $options) $(date +%T)"
  .venv/bin/python -m capxai finetune --checkpoint $start/best.pt $data --out $folder --method $method \
    --epochs $epochs --seed $seed --captions-per-image 2 --device cpu --workers 0 $options
  .venv/bin/python docs/experiments/guided-decoding/screen.py $folder/best.pt runs/demo/scenes/dataset_scenes.json \
    runs/demo/scenes test $out --grid 0.5:2
done
