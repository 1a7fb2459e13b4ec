"""Kill-and-resume equals an uninterrupted run; partial checkpoints are never picked."""

import os
import re

import numpy as np
import pytest

from adv_large_batch import checkpointing, cli

RUN = [
    "finetune",
    "--model",
    "tiny-random",
    "--train-limit",
    "128",
    "--eval-limit",
    "32",
    "--batch-size",
    "32",
    "--micro-batch-size",
    "16",
    "--epochs",
    "2",
    "--max-seq-length",
    "24",
    "--method",
    "scala",
    "--adv-start-epoch",
    "1",
    "--optimizer",
    "lamb",
    "--lr",
    "1e-3",
    "--checkpoint-every",
    "1",
    "--verbose",
    "0",
]  # 4 steps per epoch, 8 in all; ScaLA on from step 4


def strip(path):
    return re.sub(r"_\d+(?=/|$)", "", path)


def final_state(directory):
    path = checkpointing.latest_checkpoint(str(directory))
    with np.load(os.path.join(path, "state.npz")) as data:
        return checkpointing.read_meta(path), [data[k] for k in sorted(data.files)]


@pytest.mark.parametrize("stop_at", [3, 4], ids=["mid-epoch", "epoch-boundary"])
def test_resumed_run_ends_with_the_same_state(tmp_path, stop_at):
    assert cli.main([*RUN, "--checkpoint-dir", str(tmp_path / "whole")]) == 0
    interrupted = [*RUN, "--checkpoint-dir", str(tmp_path / "cut")]
    assert cli.main([*interrupted, "--stop-at-step", str(stop_at)]) == 0
    meta, _ = final_state(tmp_path / "cut")
    assert meta["global_step"] == stop_at
    assert cli.main([*interrupted, "--resume"]) == 0

    meta_whole, whole = final_state(tmp_path / "whole")
    meta_cut, resumed = final_state(tmp_path / "cut")
    assert meta_whole["global_step"] == meta_cut["global_step"] == 8
    # Same variables in the same order (Keras numbers repeated layer names per process).
    assert [strip(p) for p in meta_whole["paths"]] == [strip(p) for p in meta_cut["paths"]]
    # Weights, optimizer slots and step, seed-generator states, adv_start_step.
    for path, a, b in zip(meta_whole["paths"], whole, resumed):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
    # Only the newest two complete checkpoints are kept.
    assert len(checkpointing.complete_checkpoints(str(tmp_path / "whole"))) == 2


def test_partial_checkpoint_is_never_picked(tmp_path):
    (tmp_path / "ckpt-00000009.partial").mkdir()
    (tmp_path / "ckpt-00000004").mkdir()
    (tmp_path / "ckpt-00000004" / "meta.json").write_text("{}")
    (tmp_path / "ckpt-00000007").mkdir()  # a folder without meta.json is not complete
    assert checkpointing.latest_checkpoint(str(tmp_path)).endswith("ckpt-00000004")


def test_resume_needs_a_checkpoint_dir(capsys):
    assert cli.main(["finetune", "--resume"]) == 2
    assert "--resume needs --checkpoint-dir" in capsys.readouterr().err


def test_mixed_bfloat16_run_trains_and_restores_the_policy(tmp_path, capsys):
    import json

    import keras

    out = tmp_path / "m.json"
    args = [*RUN[:-4], "--precision", "mixed_bfloat16", "--verbose", "2", "--metrics-out", str(out)]
    assert cli.main(args) == 0
    assert keras.mixed_precision.global_policy().name == "float32"
    history = json.loads(out.read_text())["history"]
    assert all(np.isfinite(history["task_loss"]))
    assert history["perturbation_linf"][1] == pytest.approx(1e-5, rel=1e-3)  # float32 math
    assert "is below the resolution of mixed_bfloat16" in capsys.readouterr().out
