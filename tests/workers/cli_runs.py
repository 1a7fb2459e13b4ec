"""Runs several ``adv-large-batch`` command lines in one process, for a test that compares
their results exactly: ``python tests/workers/cli_runs.py RUNS.json OUT.json``.

``RUNS.json`` is a list of ``{"argv": [...], "checkpoint_dir": DIR or null}``; ``OUT.json``
gets, per run, its exit status and the step / epoch / step-in-epoch of the newest intact
checkpoint in ``DIR`` right after it.  The caller sets the environment: single-threaded op
pools and TensorFlow's own kernels (``deterministic_env``), so a float reduction is summed
in one fixed order and a value near zero cannot change sign from one run to the next.
"""

from __future__ import annotations

import json
import sys


def main(runs_path: str, out_path: str) -> None:
    from adv_large_batch import cli
    from adv_large_batch.engine import checkpointing

    with open(runs_path) as f:
        runs = json.load(f)
    results = []
    for run in runs:
        status = cli.main(run["argv"])
        position = None
        if run.get("checkpoint_dir"):
            path = checkpointing.latest_checkpoint(run["checkpoint_dir"])
            meta = checkpointing.read_meta(path)
            position = [meta["global_step"], meta["epoch"], meta["step_in_epoch"]]
        results.append({"status": status, "position": position})
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
