#!/usr/bin/env bash
# Issue 35: guided decoding's setting chosen on validation, on run.sh's start model, then scored on the test split.
set -eu
cd "$(dirname "$0")/../.."
OUT=runs/auto
.venv/bin/python -m capxai.cli evaluate --checkpoint $OUT/adaptive/best.pt --split-file $OUT/scenes/dataset_scenes.json \
  --image-root $OUT/scenes --out $OUT/eval-guided-auto --guided-decoding auto --overwrite
