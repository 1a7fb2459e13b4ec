"""The finetune CLI under a real ``horovodrun -np 2 --gloo``: it trains, and rank 0 alone writes."""

import json
import sys
from pathlib import Path

from tests.test_distributed import _horovodrun


def test_finetune_cli_two_ranks_rank0_alone_writes(horovodrun, tmp_path):
    cli = Path(sys.executable).parent / "adv-large-batch"
    proc = _horovodrun(
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
        "1",
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
