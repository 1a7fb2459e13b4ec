#!/usr/bin/env bash
# The main job: installs everything (idempotent), then a real, small ScaLA
# fine-tune of the bundled all-MiniLM-L6-v2 on Rotten Tomatoes snippets
# (1,536 training examples, global batch 128 = 4 accumulated micro-batches of 32,
# LAMB with sqrt LR scaling from base batch 32, warm-up + linear decay, PGA-1 on
# from epoch 2 of 3).  It
# prints the validation accuracy of the untrained head and of the fine-tuned
# model.  About 5 minutes on 2 CPU cores.  Extra flags are passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export TF_CPP_MIN_LOG_LEVEL=2
exec .venv/bin/adv-large-batch finetune \
  --task rotten_tomatoes --train-limit 1536 --eval-limit 512 \
  --batch-size 128 --micro-batch-size 32 --epochs 3 \
  --method scala --adv-start-epoch 2 \
  --optimizer lamb --lr 2e-3 --lr-scaling sqrt --base-batch-size 32 \
  --logdir runs/main_job/tensorboard --metrics-out runs/main_job/metrics.json "$@"
