"""``adv-large-batch train-images`` on the JAX backend without TensorFlow, end to end on
real Fashion-MNIST (Debian's files): ConAdv's shared pass on one device, and on 2
processes on localhost (``keras.distribution.initialize``, JAX's CPU collectives) stopped
at step 2 and resumed from its checkpoint; the 2-process run ends with the one-device
run's weights and adversarial buffer (the buffer split over the processes, gathered into
the checkpoint).  BatchNorm's moving statistics are the mean of the devices' own
(``engine/jax_trainer.py``), so they and the test accuracy are not compared.  Also: the
flags JAX cannot run are refused before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from adv_large_batch.commands.jax_checks import backend_problem
from tests.adversarial_examples import examples_agree
from tests.commands.test_finetune_jax import checkpoint, jax_cli, jax_env, two_processes
from tests.processes import TIMEOUT_S, run_checked

RUN = (
    "train-images --method conadv --attack-pass shared --model cifar_resnet8 --width 4 "
    "--train-limit 1024 --eval-limit 256 --batch-size 256 --micro-batch-size 64 --epochs 1 "
    "--checkpoint-every 2 --verbose 2"
).split()


@pytest.mark.slow  # three CLI runs of a small ResNet on 1024 images (~2 min on 2 cores)
def test_shared_pass_on_two_processes_with_resume_equals_one_device(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_checked(jax_cli(*RUN, "--checkpoint-dir", str(one), "--metrics-out",
                        str(tmp_path / "one.json")), jax_env())  # fmt: skip
    two_processes(*RUN, "--checkpoint-dir", str(two), "--stop-at-step", "2")
    assert sorted(p.name for p in two.glob("ckpt-*")) == ["ckpt-00000002"]
    outputs = two_processes(*RUN, "--checkpoint-dir", str(two), "--resume",
                            "--metrics-out", str(tmp_path / "two.json"))  # fmt: skip
    assert "resumed from" in outputs[0] and "at step 2" in outputs[0]
    metrics = json.loads((tmp_path / "two.json").read_text())
    assert metrics["config"]["backend"] == "jax" and 0.0 <= metrics["top1"] <= 1.0
    want, got = checkpoint(one / "ckpt-00000004"), checkpoint(two / "ckpt-00000004")
    assert sorted(want) == sorted(got)
    compared = [p for p in want if "moving_" not in p]
    assert len(compared) > 30 and any("adv_buffer_images" in p for p in compared)
    for path in compared:
        if "adv_buffer_images" in path:  # 3 px FGSM steps: a zero gradient's sign may differ
            assert examples_agree(got[path], want[path], 3 / 255), path
        else:
            np.testing.assert_allclose(got[path], want[path], rtol=1e-5, atol=1e-6, err_msg=path)
    buffer = next(want[p] for p in want if "adv_buffer_images" in p)
    assert buffer.shape == (1, 256, 28, 28, 1) and 0.0 <= buffer.min() < buffer.max() <= 1.0


@pytest.mark.parametrize(
    "flags, names",
    [
        ({"dataset": "imagenet2012"}, ["--dataset imagenet2012", "fashion_mnist"]),
        ({"augment": "randaugment"}, ["--augment randaugment", "flip_crop"]),
    ],
)
def test_image_flags_jax_cannot_run_are_refused(flags, names):
    run = SimpleNamespace(
        strategy="auto", precision="float32", profile=False, logdir=None,
        dataset="fashion_mnist", augment="flip_crop",
    )  # fmt: skip
    assert backend_problem(run, "jax") is None
    for key, value in flags.items():
        setattr(run, key, value)
    message = backend_problem(run, "jax")
    assert message is not None and all(name in message for name in names), message
    assert backend_problem(run, "tensorflow") is None


def test_train_images_refusal_exits_2_before_any_work(tmp_path):
    cmd = jax_cli(*RUN, "--augment", "augmix", "--checkpoint-dir", str(tmp_path / "c"))
    proc = subprocess.run(cmd, env=jax_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--augment augmix" in proc.stderr and not (tmp_path / "c").exists()
    assert sys.executable  # (the launcher blocks TensorFlow: the refusal needs none)
