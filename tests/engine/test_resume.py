"""Kill-and-resume equals an uninterrupted run; partial checkpoints are never picked."""

import json
import os
import re

import numpy as np
import pytest

from adv_large_batch import cli
from adv_large_batch.engine import checkpointing

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
    "2",
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


def test_resumed_runs_end_with_the_same_state(tmp_path, capsys):
    """Stopped mid-epoch (step 3) and at an epoch boundary (step 4), each resumed: both end
    with the uninterrupted run's state.  The finished run resumed trains nothing, says so
    and leaves its checkpoint as it was (one uninterrupted run serves both checks)."""
    assert cli.main([*RUN, "--checkpoint-dir", str(tmp_path / "whole")]) == 0
    meta_whole, whole = final_state(tmp_path / "whole")
    check_a_finished_run_resumes_to_nothing(tmp_path / "whole", tmp_path / "m.json", capsys)
    assert final_state(tmp_path / "whole")[0] == meta_whole
    for stop_at in (3, 4):
        cut = tmp_path / f"cut{stop_at}"
        interrupted = [*RUN, "--checkpoint-dir", str(cut)]
        assert cli.main([*interrupted, "--stop-at-step", str(stop_at)]) == 0
        meta, _ = final_state(cut)
        assert meta["global_step"] == stop_at
        assert cli.main([*interrupted, "--resume"]) == 0

        meta_cut, resumed = final_state(cut)
        assert meta_whole["global_step"] == meta_cut["global_step"] == 8
        # Same variables in the same order (Keras numbers repeated layer names per process).
        assert [strip(p) for p in meta_whole["paths"]] == [strip(p) for p in meta_cut["paths"]]
        # Weights, optimizer slots and step, seed-generator states, adv_start_step.
        for path, a, b in zip(meta_whole["paths"], whole, resumed):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{stop_at}: {path}")
    # Only the newest two complete checkpoints are kept.
    assert len(checkpointing.complete_checkpoints(str(tmp_path / "whole"))) == 2


def small_checkpoint(directory, step):
    """A real checkpoint of a tiny compiled trainer at ``step``."""
    import keras

    from adv_large_batch.engine.trainer import AccumulatingTrainer
    from tests.tiny_bert import SingleProcess

    model = AccumulatingTrainer(
        keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), backend=SingleProcess()
    )
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return checkpointing.save_checkpoint(str(directory), model, {"global_step": step}, keep=9)


def test_partial_checkpoint_is_never_picked(tmp_path):
    (tmp_path / "ckpt-00000009.partial").mkdir()
    small_checkpoint(tmp_path, 4)
    (tmp_path / "ckpt-00000007").mkdir()  # a folder without meta.json is not complete
    assert checkpointing.latest_checkpoint(str(tmp_path)).endswith("ckpt-00000004")


@pytest.mark.parametrize("damage", ["truncated state", "corrupt state", "corrupt meta"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, damage):
    """Sizes and SHA-256 in meta.json: a truncated or corrupted newest checkpoint is
    skipped with a warning (before: --resume died with a traceback)."""
    small_checkpoint(tmp_path, 4)
    newest = small_checkpoint(tmp_path, 8)
    state = os.path.join(newest, "state.npz")
    if damage == "truncated state":
        with open(state, "r+b") as f:
            f.truncate(os.path.getsize(state) // 2)
    elif damage == "corrupt state":
        with open(state, "r+b") as f:
            f.seek(100)
            f.write(b"\x00" * 8)
    else:
        with open(os.path.join(newest, "meta.json"), "w") as f:
            f.write('{"global_step": 8, "paths": [')
    assert checkpointing.integrity_problem(newest) is not None
    with pytest.warns(UserWarning, match="ckpt-00000008 is not intact"):
        assert checkpointing.latest_checkpoint(str(tmp_path)).endswith("ckpt-00000004")


def test_resume_with_no_intact_checkpoint_exits_2_without_a_traceback(tmp_path, capsys):
    directory = tmp_path / "ckpt"
    assert cli.main([*RUN, "--checkpoint-dir", str(directory), "--stop-at-step", "2"]) == 0
    for path in checkpointing.complete_checkpoints(str(directory)):
        with open(os.path.join(path, "meta.json"), "w") as f:
            f.write("{not json")
    with pytest.warns(UserWarning, match="not intact"):
        code = cli.main([*RUN, "--checkpoint-dir", str(directory), "--resume"])
    err = capsys.readouterr().err
    assert code == 2
    assert "holds no intact checkpoint" in err and "meta.json is unreadable" in err
    assert "Traceback" not in err


def check_a_finished_run_resumes_to_nothing(directory, out, capsys) -> None:
    """``--resume`` of the finished run in ``directory``: no step, a throughput of 0 (before:
    ~1e6 / s, its few seconds of set-up over no work), and a message that says so."""
    resumed = [*RUN[:-2], "--verbose", "1", "--checkpoint-dir", str(directory)]
    capsys.readouterr()
    assert cli.main([*resumed, "--resume", "--metrics-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["steps_run"] == 0 and result["examples_per_s"] == 0.0
    assert "no training step left to run" in capsys.readouterr().out


NONFINITE = ["--optimizer", "sgd", "--lr", "1e25", "--lr-scaling", "none", "--verbose", "0"]


def test_a_run_stopped_by_a_nonfinite_loss_exits_3(tmp_path, capsys):
    """Before: exit status 0, so launchers and CI took a diverged run for a success."""
    args = [a for a in RUN if a not in ("--verbose", "0")]
    i = args.index("--optimizer")
    args = args[:i] + args[i + 4 :]  # drop "--optimizer lamb --lr 1e-3"
    directory = tmp_path / "ckpt"
    assert cli.main([*args, *NONFINITE, "--checkpoint-dir", str(directory)]) == cli.EXIT_NONFINITE
    assert "run stopped" in capsys.readouterr().out
    meta = checkpointing.read_meta(checkpointing.latest_checkpoint(str(directory)))
    assert meta["global_step"] < 8  # nothing written at or after the bad step


def test_resume_needs_a_checkpoint_dir(capsys):
    assert cli.main(["finetune", "--resume"]) == 2
    assert "--resume needs --checkpoint-dir" in capsys.readouterr().err


def test_mixed_bfloat16_run_trains_and_restores_the_policy(tmp_path, capsys):
    import keras

    out = tmp_path / "m.json"
    args = [*RUN[:-4], "--precision", "mixed_bfloat16", "--verbose", "2", "--metrics-out", str(out)]
    assert cli.main(args) == 0
    assert keras.mixed_precision.global_policy().name == "float32"
    history = json.loads(out.read_text())["history"]
    assert all(np.isfinite(history["task_loss"]))
    assert history["perturbation_linf"][1] == pytest.approx(1e-5, rel=1e-3)  # float32 math
    assert "is below the resolution of mixed_bfloat16" in capsys.readouterr().out
