#!/usr/bin/env bash
# The test command: installs everything (idempotent, see scripts/install.sh),
# then runs the whole test suite, the real 2-process horovodrun tests and the
# end-to-end runs on the bundled weights and data included.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export ALB_REQUIRE_HOROVOD=${ALB_REQUIRE_HOROVOD:-1} TF_CPP_MIN_LOG_LEVEL=2
start=$(date +%s)
.venv/bin/python -m ruff check adv_large_batch models tests benchmarks
# Two pytest workers: on 2 cores the suite is bound by single-threaded tracing
# as much as by kernels, so two processes finish it ~1.6x sooner (measured on
# tests/scala/test_scala.py + tests/conadv/test_conadv.py: 108 s -> 71 s).
# ALB_TEST_WORKERS=0 runs it in one process. The slow tests are collected first
# (tests/conftest.py) and handed out one at a time, so they start at once and the
# short ones fill in around them.
.venv/bin/python -m pytest -ra --durations=25 -n "${ALB_TEST_WORKERS:-2}" --maxschedchunk 1 "$@"
echo "[test] pytest finished in $(( $(date +%s) - start ))s"
