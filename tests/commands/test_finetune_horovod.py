"""The finetune CLI under a real ``horovodrun -np 2 --gloo``: it trains, and rank 0 alone writes."""

import json
import sys
from pathlib import Path

from tests.processes import horovodrun_2


def test_finetune_cli_two_ranks_rank0_alone_writes(horovodrun, tmp_path):
    cli = Path(sys.executable).parent / "adv-large-batch"
    proc = horovodrun_2(
        horovodrun,
        str(cli),
        "finetune",
        "--model",
        "tiny-random",
        "--strategy",
        "horovod",
        "--train-limit",
        "256",
        "--eval-limit",
        "64",
        "--batch-size",
        "32",
        "--micro-batch-size",
        "8",
        "--epochs",
        "2",
        "--adv-start-epoch",
        "2",
        "--max-seq-length",
        "32",
        "--optimizer",
        "lamb",
        "--lr",
        "1e-3",
        "--verbose",
        "2",
        "--logdir",
        str(tmp_path / "tb"),
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--metrics-out",
        str(tmp_path / "metrics.json"),
    )
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert result["config"]["workers"] == 2 and result["config"]["backend"] == "horovod"
    # 256 examples over 2 ranks = 128 each; per-rank batch 16 -> 8 steps per epoch.
    assert result["steps"] == 16
    assert result["history"]["adv_on"] == [0.0, 1.0]
    # One writer: a single event file per TensorBoard run folder, one set of checkpoints.
    for run in ("train", "validation"):
        assert len(list((tmp_path / "tb" / run).glob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("epoch_*")) == [
        "epoch_001.weights.h5",
        "epoch_002.weights.h5",
    ]
    # Only rank 0 prints the run summary.
    assert proc.stdout.count("[finetune] validation") == 1, proc.stdout


def test_a_nonfinite_stop_under_horovodrun_is_a_failed_launch(horovodrun, tmp_path):
    """Every rank returns exit status 3 (EXIT_NONFINITE), so horovodrun fails too (before:
    0, and a launcher took the diverged run for a success)."""
    import subprocess

    from adv_large_batch.cli import EXIT_NONFINITE
    from tests.processes import REPO, quiet_env

    cli = Path(sys.executable).parent / "adv-large-batch"
    cmd = [
        str(horovodrun), "-np", "2", "-H", "localhost:2", "--gloo", str(cli), "finetune",
        "--model", "tiny-random", "--strategy", "horovod", "--train-limit", "128",
        "--eval-limit", "16", "--batch-size", "32", "--epochs", "1", "--max-seq-length", "16",
        "--method", "baseline", "--optimizer", "sgd", "--lr", "1e25", "--lr-scaling", "none",
        "--verbose", "0",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode != 0, proc.stdout[-2000:]
    # horovodrun exits 1 and names the first failing rank's status ("Exit code: 3").
    said = (proc.stdout + proc.stderr).lower()
    assert f"exit code: {EXIT_NONFINITE}" in said, (proc.returncode, said[-2000:])
    assert "run stopped" in proc.stdout
