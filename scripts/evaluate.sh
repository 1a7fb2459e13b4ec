#!/usr/bin/env bash
# The evaluation suite (issue 8): speed benchmarks, the reproduction sweeps on real
# data, sharpness of the final weights, then the tables and plots (docs/*.png).
#
#   bash scripts/evaluate.sh            # everything (about 3 hours on 2 busy CPU cores)
#   bash scripts/evaluate.sh bench      # only the speed benchmarks (~15 minutes)
#   bash scripts/evaluate.sh repro      # only the sweeps, sharpness and the report
#
# Every sweep appends to a JSONL log under runs/repro/ and skips what is already
# there, so an interrupted suite resumes where it stopped.  Results and the exact
# commands are collected in docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export TF_CPP_MIN_LOG_LEVEL=2
PY=.venv/bin/python
part="${1:-all}"
mkdir -p runs/bench runs/repro runs/sharpness

if [[ "$part" == all || "$part" == bench ]]; then
  $PY benchmarks/time_breakdown.py --json-out runs/bench/time_breakdown.json
  $PY benchmarks/bench_images.py --json-out runs/bench/bench_images.json
  $PY benchmarks/bench_horovod.py --json-out runs/bench/bench_horovod.json
  $PY benchmarks/bench_input_pipeline.py --json-out runs/bench/bench_input_pipeline.json
fi

if [[ "$part" == all || "$part" == repro ]]; then
  $PY benchmarks/reproduce_scala.py --log runs/repro/scala.jsonl
  $PY benchmarks/reproduce_conadv.py --log runs/repro/conadv.jsonl
  # Sharpness of seed 0's final weights: small batch (Adam), large batch (LAMB), ScaLA.
  for run in runs/repro/scala_checkpoints/*/; do
    name="$(basename "$run")"
    .venv/bin/adv-large-batch sharpness --checkpoint "$run" --batch-size 128 \
      --iterations 30 --json-out "runs/sharpness/$name.json"
  done
  # What ScaLA's regulariser is made of at eps 1e-5 (dropout vs the perturbation).
  for run in lamb-512 adam-32; do
    $PY benchmarks/regulariser_magnitude.py --checkpoint "runs/repro/scala_checkpoints/$run" \
      --draws 8 --json-out "runs/bench/regulariser_magnitude_$run.json"
  done
  $PY benchmarks/report.py
fi
