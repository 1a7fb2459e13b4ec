#!/usr/bin/env bash
# ScaLA on GLUE with BERT-base, the paper's setup (scala.md section 4, appendix B):
#   hosts: 2 nodes x 16 GPUs (e.g. 2 NVIDIA DGX-2), P = 32 workers, NCCL allreduce.
#   batch: global 1024 = 32 workers x 32 per worker (one micro-batch each; raise
#          --batch-size to 2048-8192 and keep --micro-batch-size 32 to accumulate).
#   LR:    sqrt scaling from base batch 32: 5e-5 -> 2.83e-4 at 1K (paper grid 5.6e-5..1e-3);
#          with LAMB and a fresh head a larger base LR (1e-3..2e-3) trains the head faster.
#   PGA-1: eps 1e-5, rho 1e-4, lambda 1, injected from epoch 3 of 6 (t_s in {3, 5}).
# UNTESTED here (no GPUs on the dev/CI machines); the same command runs on 2 CPU
# processes in horovodrun_scripts/local_2proc_cpu.sh.
# Environment knobs:
#   HOROVOD_FUSION_THRESHOLD  bytes fused into one allreduce (default 128 MiB; BERT-base
#                             gradients are ~440 MB in fp32, so 64-128 MiB gives ~4 fusions)
#   HOROVOD_CYCLE_TIME        ms between fusion cycles (default 5; 1-3 lowers latency)
#   NCCL_SOCKET_IFNAME        the inter-node NIC (e.g. ib0 / eth0)
#   NCCL_IB_DISABLE=0         use InfiniBand between the two nodes
#   BERT_DIR                  local Hugging Face BERT-base folder (config.json, model.safetensors, vocab.txt)
#   GLUE_DIR, TASK            the GLUE TSV root and task (sst2, qnli, mnli, qqp, ...)
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BERT_DIR:?set BERT_DIR to a local bert-base-uncased folder}"
: "${GLUE_DIR:?set GLUE_DIR to the folder holding SST-2/, QNLI/, MNLI/, QQP/}"
TASK=${TASK:-sst2}
HOSTS=${HOSTS:-node1:16,node2:16}
export HOROVOD_FUSION_THRESHOLD=${HOROVOD_FUSION_THRESHOLD:-67108864} HOROVOD_CYCLE_TIME=${HOROVOD_CYCLE_TIME:-2}
horovodrun -np 32 -H "$HOSTS" adv-large-batch finetune --strategy horovod \
  --task "$TASK" --data-source tsv --data-dir "$GLUE_DIR" --model "$BERT_DIR" \
  --batch-size 1024 --micro-batch-size 32 --epochs 6 --max-seq-length 128 \
  --method scala --adv-start-epoch 3 --adv-eps 1e-5 --adv-step 1e-4 --adv-lambda 1 \
  --optimizer lamb --lr 5e-5 --lr-scaling sqrt --base-batch-size 32 --warmup-ratio 0.1 \
  --logdir "runs/scala_${TASK}_bert_base" --checkpoint-dir "runs/scala_${TASK}_bert_base/ckpt" \
  --metrics-out "runs/scala_${TASK}_bert_base/metrics.json" "$@"
