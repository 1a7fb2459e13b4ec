"""What a cluster does to a run, done for real to one process: SIGTERM mid-epoch, a full
checkpoint disk (a 2 MiB tmpfs), a checkpoint of another model; and the seed a notebook
trainer takes when it is given none.  (Horovod ranks: tests/commands/test_faults_horovod.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from adv_large_batch import cli
from adv_large_batch.engine import checkpointing
from tests.processes import REPO, TIMEOUT_S, WORKERS, deterministic_env, run_checked

CLI = [sys.executable, "-m", "adv_large_batch.cli"]

TEXT = [
    "finetune", "--model", "tiny-random", "--train-limit", "256", "--eval-limit", "16",
    "--batch-size", "16", "--micro-batch-size", "8", "--epochs", "2", "--max-seq-length", "16",
    "--adv-start-epoch", "2", "--optimizer", "lamb", "--lr", "1e-3", "--seed", "5",
]  # fmt: skip
# 16 steps per epoch, 32 in all; ScaLA (dropout on, LAMB, probs target) from step 16.


def signal_after_first_epoch(
    argv: list[str], signum: int, cli: list[str] = CLI, when: str = "Epoch 1/"
) -> subprocess.CompletedProcess:
    """Run ``adv-large-batch argv`` in a subprocess; send ``signum`` to it as soon as it
    prints a line starting with ``when`` (default: the first epoch's line, ``--verbose 2``,
    so the signal lands mid-epoch 2)."""
    proc = subprocess.Popen(
        [*cli, *argv, "--verbose", "2"],
        cwd=REPO,
        env=deterministic_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(when):
            proc.send_signal(signum)
            break
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the signalled run did not end")
    return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out, err)


def newest(directory) -> tuple[dict, list[np.ndarray]]:
    path = checkpointing.latest_checkpoint(str(directory))
    with np.load(os.path.join(path, "state.npz")) as data:
        return checkpointing.read_meta(path), [data[k] for k in sorted(data.files)]


def test_sigterm_mid_epoch_checkpoints_that_step_exits_75_and_resumes_exactly(tmp_path):
    """Before: SIGTERM killed the run at once (status 143) and the steps since the last
    epoch checkpoint were lost."""
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    run_checked([*CLI, *TEXT, "--verbose", "0", "--checkpoint-dir", whole], deterministic_env())

    stopped = signal_after_first_epoch([*TEXT, "--checkpoint-dir", str(cut)], signal.SIGTERM)
    assert stopped.returncode == cli.EXIT_PREEMPTED, stopped.stderr[-3000:]
    meta, _ = newest(cut)
    step = meta["global_step"]
    assert 16 < step < 32  # mid-run, after the epoch-1 checkpoint (--checkpoint-every: epochs)
    said = [line for line in stopped.stderr.splitlines() if "preempted" in line]
    assert said == [
        f"[finetune] preempted by SIGTERM after step {step}: checkpoint "
        f"{cut / f'ckpt-{step:08d}'} written; resume with: "
        + cli.resume_command([*TEXT, "--checkpoint-dir", str(cut), "--verbose", "2"])
    ]
    assert "Traceback" not in stopped.stderr

    run_checked([*CLI, *TEXT, "--verbose", "0", "--checkpoint-dir", cut, "--resume"],
                deterministic_env())  # fmt: skip
    meta_whole, state_whole = newest(whole)
    meta_cut, state_cut = newest(cut)
    assert meta_whole["global_step"] == meta_cut["global_step"] == 32
    for path, a, b in zip(meta_whole["paths"], state_whole, state_cut):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)


def test_sigterm_before_the_first_step_stops_after_it_checkpointed_and_exits_75(tmp_path):
    """A signal while the model is built or restored (here: on the run's first line, after
    the model is compiled) stops the run after its first step, with that step's checkpoint
    (before: the watch began with ``fit``, so the process died with 143, and under
    ``horovodrun`` its peer failed in the start-of-training broadcast with status 1)."""
    cut = tmp_path / "cut"
    stopped = signal_after_first_epoch(
        [*TEXT, "--checkpoint-dir", str(cut)], signal.SIGTERM, when="[finetune] task="
    )
    assert stopped.returncode == cli.EXIT_PREEMPTED, stopped.stderr[-3000:]
    meta, _ = newest(cut)
    assert meta["global_step"] == 1
    assert "preempted by SIGTERM after step 1" in stopped.stderr
    assert "Traceback" not in stopped.stderr


def test_sigint_without_a_checkpoint_dir_says_nothing_could_be_saved(tmp_path):
    stopped = signal_after_first_epoch(TEXT, signal.SIGINT)
    assert stopped.returncode == cli.EXIT_PREEMPTED, stopped.stderr[-3000:]
    assert "preempted by SIGINT" in stopped.stderr
    assert "nothing could be saved (no --checkpoint-dir)" in stopped.stderr
    assert "KeyboardInterrupt" not in stopped.stderr


def test_a_preempted_conadv_run_on_two_replicas_keeps_each_replicas_buffer(tmp_path):
    """Every replica's adversarial batch in flight is saved at the preempted step, so the
    resumed run restores it (before: only at --checkpoint-every steps, and a run preempted
    between them resumed from replica 0's buffer, no longer exact)."""
    mirrored = [sys.executable, str(WORKERS / "mirrored_cli.py")]
    ckpt = tmp_path / "ckpt"
    argv = [
        "train-images", "--strategy", "mirrored", "--model", "cifar_resnet8", "--width", "4",
        "--train-limit", "512", "--eval-limit", "32", "--batch-size", "32", "--epochs", "2",
        "--method", "conadv", "--seed", "2", "--checkpoint-dir", str(ckpt),
    ]  # fmt: skip
    stopped = signal_after_first_epoch(argv, signal.SIGTERM, mirrored)
    assert stopped.returncode == cli.EXIT_PREEMPTED, stopped.stderr[-3000:]
    step = newest(ckpt)[0]["global_step"]
    assert 16 < step < 32
    assert (ckpt / "worker-buffers" / f"ckpt-{step:08d}-rank0.npz").exists()
    resumed = subprocess.run(
        [*mirrored, *argv, "--resume", "--verbose", "2"],
        cwd=REPO,
        env=deterministic_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "no saved adversarial buffer" not in resumed.stdout + resumed.stderr
    assert newest(ckpt)[0]["global_step"] == 32


# ---- a full checkpoint disk ---------------------------------------------------------------
IMAGES = [
    "train-images", "--model", "cifar_resnet8", "--width", "4", "--train-limit", "256",
    "--eval-limit", "32", "--batch-size", "64", "--epochs", "2", "--method", "conadv",
    "--checkpoint-every", "1", "--seed", "1", "--verbose", "0",
]  # fmt: skip
# 4 steps per epoch, 8 in all.


@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MiB tmpfs (root only: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory) -> None:
    """Write a file into ``directory`` until its filesystem has no byte left."""
    fd = os.open(os.path.join(directory, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def test_a_full_disk_stops_with_74_keeps_the_last_checkpoint_and_resumes(small_disk, capsys):
    """Before: an OSError traceback (status 1) and a ckpt-N.partial folder left behind."""
    directory = small_disk / "ckpt"
    assert cli.main([*IMAGES, "--checkpoint-dir", str(directory), "--stop-at-step", "2"]) == 0
    before, _ = newest(directory)
    assert before["global_step"] == 2
    capsys.readouterr()
    fill(small_disk)

    status = cli.main([*IMAGES, "--checkpoint-dir", str(directory), "--resume"])
    err = capsys.readouterr().err
    assert status == cli.EXIT_CHECKPOINT_WRITE == 74
    assert f"could not write checkpoint {directory / 'ckpt-00000003'}" in err
    assert "No space left on device" in err and "newest intact checkpoint" in err
    assert "resume with: adv-large-batch train-images" in err
    assert not [n for n in os.listdir(directory) if n.endswith(".partial")]
    assert checkpointing.latest_checkpoint(str(directory)) == str(directory / "ckpt-00000002")
    assert checkpointing.integrity_problem(str(directory / "ckpt-00000002")) is None

    os.remove(small_disk / "filler")
    assert cli.main([*IMAGES, "--checkpoint-dir", str(directory), "--resume"]) == 0
    after, _ = newest(directory)
    assert after["global_step"] == 8


# ---- restoring, seeds ------------------------------------------------------------------------
def tiny_trainer(units: int, optimizer: str = "sgd", seed=None):
    import keras

    from adv_large_batch.engine.trainer import AccumulatingTrainer
    from tests.tiny_bert import SingleProcess

    network = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(units, name="hidden"), keras.layers.Dense(1)]
    )
    model = AccumulatingTrainer(network, backend=SingleProcess(), seed=seed)
    model.compile(optimizer=optimizer, loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_restoring_another_models_checkpoint_names_the_first_differing_variable(tmp_path):
    """Before: variables were assigned by position and only shapes checked, so a checkpoint
    whose variables line up in shape restored silently into the wrong places."""
    import keras

    from adv_large_batch.engine.trainer import AccumulatingTrainer
    from tests.tiny_bert import SingleProcess

    saved = tiny_trainer(4)
    path = checkpointing.save_checkpoint(str(tmp_path), saved, {"global_step": 1})
    other = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, name="encoder"), keras.layers.Dense(1)]
    )
    model = AccumulatingTrainer(other, backend=SingleProcess())
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(
        cli.ConfigError, match=r"is '\S*hidden/kernel', the model's is '\S*encoder/kernel'"
    ):
        checkpointing.restore_checkpoint(path, model)
    checkpointing.restore_checkpoint(path, tiny_trainer(4))  # the same model restores


def test_a_trainer_without_a_seed_takes_keras_global_seed():
    """Before: seed=None keyed every draw with 0, whatever keras.utils.set_random_seed said."""
    import keras

    keras.utils.set_random_seed(11)
    first = tiny_trainer(2)
    keras.utils.set_random_seed(12)
    second = tiny_trainer(2)
    assert (first.seed, second.seed) == (11, 12)
    assert tiny_trainer(2, seed=3).seed == 3
    key = [k.numpy().tolist() for k in (first.draw_key(0), second.draw_key(0))]
    assert key[0] != key[1]  # different dropout masks and random starts
    assert first.get_config()["seed"] == 11  # a reloaded model draws the same
