#!/usr/bin/env bash
# ConAdv on ImageNet with ResNet-50, the paper's setup (conadv.md section 4, table 1):
#   hosts: N nodes x 8 GPUs; the example is 4 x 8 = 32 workers (scale -np and HOSTS).
#   batch: global 32768 = 32 workers x 1024 per worker (micro-batches of 256 clean
#          + 256 adversarial images per pass); the paper scales to 96K.
#   LR:    LARS with the published large-batch recipe for the global batch
#          (adv_large_batch/optimizers/recipes.py; no --lr): at 32K peak 34 with 13.7
#          warm-up epochs, polynomial decay (power 2) to 1e-4, momentum 0.9, weight decay
#          5e-5, label smoothing 0.1, 90 epochs.  --dry-run prints the resolved numbers.
#   ConAdv: 1-step PGD, eps = step = 1 pixel (of 255), staleness tau = 1.
# UNTESTED here (no GPUs, no ImageNet). imagenet2012 must be prepared for
# tensorflow-datasets (--manual-dir holding ILSVRC2012_img_{train,val}.tar).
# Environment knobs: HOROVOD_FUSION_THRESHOLD (ResNet-50 grads are ~100 MB: 32-64 MiB),
# HOROVOD_CYCLE_TIME (1-5 ms), NCCL_SOCKET_IFNAME, NCCL_IB_DISABLE=0,
# TF_GPU_THREAD_MODE=gpu_private for input-bound steps.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TFDS_DIR:?set TFDS_DIR to the tensorflow-datasets data_dir}"
HOSTS=${HOSTS:-node1:8,node2:8,node3:8,node4:8}
MODEL=${MODEL:-resnet50}
horovodrun -np 32 -H "$HOSTS" adv-large-batch train-images --strategy horovod \
  --dataset imagenet2012 --data-dir "$TFDS_DIR" ${MANUAL_DIR:+--manual-dir "$MANUAL_DIR"} \
  --model "$MODEL" --method conadv --staleness 1 --adv-eps 1 --adv-step 1 --augment flip_crop \
  --batch-size 32768 --micro-batch-size 256 --epochs 90 --optimizer lars \
  --precision mixed_float16 \
  --logdir "runs/conadv_${MODEL}" --checkpoint-dir "runs/conadv_${MODEL}/ckpt" \
  --metrics-out "runs/conadv_${MODEL}/metrics.json" "$@"
