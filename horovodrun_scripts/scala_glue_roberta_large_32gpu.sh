#!/usr/bin/env bash
# ScaLA on GLUE with RoBERTa-large, the paper's second setup (scala.md section 4, table 2
# "RoBERTa_large", appendix B):
#   hosts: 2 nodes x 16 GPUs (e.g. 2 NVIDIA DGX-2, V100 32 GB), P = 32 workers, NCCL allreduce
#          over InfiniBand between the nodes.
#   batch: global 1024 = 32 workers x 32 per worker = 32 x (2 accumulated micro-batches of 16).
#          RoBERTa-large (24 layers, 1024 hidden, 355M parameters) keeps the clean and the
#          adversarial pass of a micro-batch on one tape. Estimate (not measured: no GPUs
#          here), float32, 128 tokens: ~4.4 GB of activations per pass at micro-batch 16, plus
#          ~7 GB of weights, gradients, accumulators and LAMB slots -> ~16 GB, within a 32 GB
#          V100; micro-batch 32 (~25 GB) is tight there, fine on 80 GB GPUs.
#   LR:    sqrt scaling from base batch 32: 1e-5 (RoBERTa-large's usual small-batch GLUE LR)
#          -> 5.66e-5 at 1K, the first value of the paper's large-batch grid 5.6e-5..1e-3.
#   PGA-1: eps 1e-5, rho 1e-4, lambda 1, injected from epoch 3 of 6 (t_s in {3, 5}); float32
#          (the 1e-5 radius is below half-precision resolution, see README).
# UNTESTED here (no GPUs, no RoBERTa-large weights on the dev/CI machines); the RoBERTa path
# (keras-hub preset and Hugging Face folders) is tested on tiny random models in
# tests/models/test_perturbable_roberta.py, and the same command shape runs on 2 CPU processes in
# horovodrun_scripts/local_2proc_cpu.sh.
# Environment knobs:
#   HOROVOD_FUSION_THRESHOLD  bytes fused into one allreduce (default here 128 MiB; RoBERTa-large
#                             gradients are ~1.4 GB in fp32, so ~11 fusions per step)
#   HOROVOD_CYCLE_TIME        ms between fusion cycles (default here 2; 1-5)
#   NCCL_SOCKET_IFNAME        the inter-node NIC (e.g. ib0 / eth0)
#   NCCL_IB_DISABLE=0         use InfiniBand between the two nodes
#   ROBERTA_DIR               local RoBERTa-large folder: a keras-hub preset (save_to_preset:
#                             config.json, model.weights.h5, tokenizer.json + assets/) or a Hugging
#                             Face roberta-large folder (config.json, model.safetensors, vocab.json,
#                             merges.txt); nothing is downloaded
#   GLUE_DIR, TASK            the GLUE TSV root and task (sst2, qnli, mnli, qqp, ...)
#   HOSTS                     horovodrun host list (default node1:16,node2:16)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${ROBERTA_DIR:?set ROBERTA_DIR to a local roberta-large folder (keras-hub preset or Hugging Face)}"
: "${GLUE_DIR:?set GLUE_DIR to the folder holding SST-2/, QNLI/, MNLI/, QQP/}"
TASK=${TASK:-sst2}
HOSTS=${HOSTS:-node1:16,node2:16}
export HOROVOD_FUSION_THRESHOLD=${HOROVOD_FUSION_THRESHOLD:-134217728} HOROVOD_CYCLE_TIME=${HOROVOD_CYCLE_TIME:-2}
horovodrun -np 32 -H "$HOSTS" adv-large-batch finetune --strategy horovod \
  --task "$TASK" --data-source tsv --data-dir "$GLUE_DIR" --model "$ROBERTA_DIR" \
  --batch-size 1024 --micro-batch-size 16 --epochs 6 --max-seq-length 128 \
  --method scala --adv-start-epoch 3 --adv-eps 1e-5 --adv-step 1e-4 --adv-lambda 1 \
  --optimizer lamb --lr 1e-5 --lr-scaling sqrt --base-batch-size 32 --warmup-ratio 0.1 \
  --logdir "runs/scala_${TASK}_roberta_large" --checkpoint-dir "runs/scala_${TASK}_roberta_large/ckpt" \
  --metrics-out "runs/scala_${TASK}_roberta_large/metrics.json" "$@"
