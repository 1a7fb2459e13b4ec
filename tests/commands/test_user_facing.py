"""What a user sees: the progress line, the paper's epoch numbering, keras-hub preset names,
the dry run's arithmetic, the run config in TensorBoard's HParams tab, and the last line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adv_large_batch import cli

TINY = [
    "finetune", "--model", "tiny-random", "--train-limit", "64", "--eval-limit", "32",
    "--batch-size", "16", "--micro-batch-size", "8", "--epochs", "2", "--max-seq-length", "16",
    "--method", "scala", "--optimizer", "lamb", "--lr", "1e-3",
]  # fmt: skip


def test_verbose_2_prints_one_short_plain_line_per_epoch(tmp_path, capsys):
    """Before: 14 metrics per line, most in scientific notation (``0.0000e+00``)."""
    logdir, out = tmp_path / "tb", tmp_path / "m.json"
    args = [*TINY, "--adv-start-epoch", "2", "--verbose", "2"]
    assert cli.main([*args, "--logdir", str(logdir), "--metrics-out", str(out)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch ")]
    assert [line.split(" - ")[0] for line in lines] == ["Epoch 1/2", "Epoch 2/2"]
    first, second = (line.split(" - ") for line in lines)
    names = [part.split(" ")[0] for part in first[2:]]
    assert names[:2] == ["loss", "accuracy"] and "lr" in names and "val_accuracy" in names
    assert "regulariser" not in names  # off in epoch 1 ...
    assert "regulariser" in [part.split(" ")[0] for part in second]  # ... on in epoch 2
    assert len(first) <= 10 and "e+" not in lines[0] and "e-0" not in lines[0]
    assert re.search(r" \d+\.\d ex/s", lines[0])
    # Every other scalar is still logged for TensorBoard and --metrics-out.
    history = json.loads(out.read_text())["history"]
    assert {"adv_time_s", "nonfinite_steps", "perturbation_l2", "grad_norm"} <= set(history)


def test_adv_start_epoch_is_the_papers_one_based_t_s(capsys):
    """t_s = 2 of 2: on in the second epoch, announced as Keras numbers it (before:
    ``--adv-start-epoch 2`` was beyond 2 epochs, and the switch printed epoch 1 for
    Keras' ``Epoch 2/2``)."""
    out = None
    assert cli.main([*TINY, "--adv-start-epoch", "2", "--verbose", "2"]) == 0
    out = capsys.readouterr().out
    assert "[ScaLA] epoch 2/2: adversarial perturbation ON from step 4" in out
    assert cli.main([*TINY, "--adv-start-epoch", "3", "--verbose", "0"]) == cli.EXIT_BAD_INPUT
    assert "--adv-start-epoch 3 is beyond --epochs 2" in capsys.readouterr().err


def test_a_keras_hub_preset_name_that_cannot_be_fetched_says_so_in_one_line(capsys):
    """Before: exit 2 with "not a folder".  Now the name goes to keras-hub's from_preset;
    offline it fails with one line naming the preset and the local-folder route."""
    code = cli.main([*TINY[:1], "--model", "bert_tiny_en_uncased", *TINY[3:], "--verbose", "0"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "'bert_tiny_en_uncased'" in lines[0]
    assert "save_to_preset('DIR')" in lines[0] and "--model DIR" in lines[0]
    assert "Traceback" not in err


@pytest.mark.horovod
def test_dry_run_arithmetic_under_two_horovod_ranks(horovodrun, tmp_path):
    """2 workers x (16 rows = 2 micro-batches of 8), 256 examples: 8 steps per epoch, 16 in
    all; peak LR 1e-3 x sqrt(32 / 8); warm-up ceil(0.1 x 16) = 2; t_s = 2 -> step 8.
    Only rank 0 prints, nothing is trained, and the plan goes to --metrics-out."""
    from tests.processes import REPO, quiet_env

    out = tmp_path / "plan.json"
    exe = Path(sys.executable).parent / "adv-large-batch"
    cmd = [
        str(horovodrun), "-np", "2", "-H", "localhost:2", "--gloo", str(exe), "finetune",
        "--model", "tiny-random", "--strategy", "horovod", "--train-limit", "256",
        "--batch-size", "32", "--micro-batch-size", "8", "--epochs", "2",
        "--max-seq-length", "16", "--adv-start-epoch", "2", "--lr", "1e-3",
        "--base-batch-size", "8", "--checkpoint-dir", str(tmp_path / "ckpt"),
        "--metrics-out", str(out), "--dry-run",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=quiet_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    said = dict(re.findall(r"dry run: (\w+) = (.+)", proc.stdout))
    expected = {
        "workers": "2",
        "replicas_per_worker": "1",
        "global_batch": "32",
        "per_worker_batch": "16",
        "micro_batch": "8",
        "micro_batches_per_replica": "2",
        "steps_per_epoch": "8",
        "total_steps": "16",
        "warmup_steps": "2",
    }
    assert {k: said.get(k) for k in expected} == expected
    assert float(said["peak_learning_rate"]) == pytest.approx(2e-3)
    assert said["perturbation_from"].startswith("step 8 ")
    assert proc.stdout.count("dry run: workers") == 1  # rank 0 only
    plan = json.loads(out.read_text())["dry_run"]
    assert plan["total_steps"] == 16 and sum(g["variables"] for g in plan["parameter_groups"]) > 0
    assert not (tmp_path / "ckpt").exists() or not any((tmp_path / "ckpt").iterdir())


def _hparams_of(logdir: Path) -> dict:
    """The hparams written to ``logdir``'s own event file, read back with TensorBoard's
    plugin protos."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import plugin_data_pb2

    values = {}
    for path in logdir.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content
                )
                if data.HasField("session_start_info"):
                    for key, v in data.session_start_info.hparams.items():
                        values[key] = v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind"))
    return values


def test_the_run_config_is_in_tensorboard_and_the_last_line_says_where(tmp_path, capsys):
    logdir, out = tmp_path / "tb", tmp_path / "m.json"
    args = [*TINY, "--verbose", "1", "--logdir", str(logdir), "--metrics-out", str(out)]
    assert cli.main([*args, "--checkpoint-dir", str(tmp_path / "ckpt")]) == 0
    hparams = _hparams_of(logdir)
    assert hparams["run.batch_size"] == 16 and hparams["adversarial.method"] == "scala"
    assert hparams["optimizer.optimizer"] == "lamb" and hparams["workers"] == 1
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("[finetune] validation {'accuracy': ")
    assert f"TensorBoard {logdir}" in last and f"metrics {out}" in last
    assert "checkpoint " in last and "ckpt-00000008" in last and " ex/s" in last
