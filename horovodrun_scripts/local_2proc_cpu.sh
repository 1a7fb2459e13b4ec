#!/usr/bin/env bash
# Runs HERE: 2 Horovod processes on this 2-core machine (Gloo, no GPU).
#   hosts: localhost:2            workers P = 2
#   ScaLA: global batch 64 = 2 workers x 32 per worker = 2 x (2 micro-batches of 16)
#   ConAdv: global batch 256 = 2 workers x 128
# Each rank uses one intra-op thread so the two ranks share the two cores.
# Extra flags go to both commands.
set -euo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2 CUDA_VISIBLE_DEVICES="" TF_NUM_INTRAOP_THREADS=1 TF_NUM_INTEROP_THREADS=1
HVD=.venv/bin/horovodrun
CLI=.venv/bin/adv-large-batch

$HVD -np 2 -H localhost:2 --gloo $CLI finetune --strategy horovod \
  --task rotten_tomatoes --train-limit 1024 --eval-limit 256 \
  --batch-size 64 --micro-batch-size 16 --epochs 2 --adv-start-epoch 2 \
  --optimizer lamb --lr 2e-3 --lr-scaling sqrt --base-batch-size 32 \
  --logdir runs/hvd_local/scala --metrics-out runs/hvd_local/scala.json --verbose 2 "$@"

$HVD -np 2 -H localhost:2 --gloo $CLI train-images --strategy horovod \
  --dataset fashion_mnist --model cifar_resnet20 --method conadv --train-limit 4096 \
  --batch-size 256 --epochs 1 \
  --logdir runs/hvd_local/conadv --metrics-out runs/hvd_local/conadv.json --verbose 2 "$@"
