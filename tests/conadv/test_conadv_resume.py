"""train-images (ConAdv, tau = 1) stopped and resumed equals an uninterrupted run.

The resumable stream (``image_pipeline.train_stream``) is checked on its own first: a
stream started at step g is the tail of the stream started at 0 (pixels and labels,
augmentation included), for the in-memory and the streamed path, and two workers'
slices of a step are one process's batch of that step.
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch import cli
from adv_large_batch.data import image_pipeline
from adv_large_batch.data.augment import crop_padding
from adv_large_batch.engine import checkpointing
from tests.data.test_image_data import is_crop_of_padded
from tests.processes import WORKERS, deterministic_env, run_checked

N, SHAPE = 40, (8, 8, 1)


def tiny_split() -> tf.data.Dataset:
    """Image i is a ramp plus i (so rows are told apart and flips/crops show), label i."""
    ramp = np.arange(8)[None, :, None] * np.ones(SHAPE)
    images = (np.arange(N)[:, None, None, None] * 4 + ramp[None]).astype(np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, np.arange(N, dtype=np.int32)))


def take(stream: tf.data.Dataset, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [batch for _, batch in zip(range(n), stream.as_numpy_iterator())]


@pytest.mark.parametrize("in_memory", [True, False], ids=["in-memory", "streamed"])
def test_a_stream_started_at_step_g_is_the_tail_of_the_whole_stream(in_memory):
    tf.random.set_seed(0)  # the global seed is set in real runs (and by other tests)
    split = tiny_split()
    arrays = image_pipeline.materialize(split, N, SHAPE) if in_memory else None
    augment = image_pipeline.seeded_augmenter("flip_crop", SHAPE)

    def stream(start_step: int) -> tf.data.Dataset:
        return image_pipeline.train_stream(
            split, N, 8, 5, augment, start_step=start_step, arrays=arrays
        )

    whole = take(stream(0), 12)  # 5 steps per epoch: 2.4 epochs
    for g in (3, 5, 7):  # mid-epoch, an epoch boundary, mid-epoch of the second epoch
        for (x, y), (x_ref, y_ref) in zip(take(stream(g), 12 - g), whole[g:]):
            np.testing.assert_array_equal(y, y_ref)
            np.testing.assert_array_equal(x, x_ref)
    for epoch in range(2):  # each epoch: every example once, a new order and new crops
        labels = np.concatenate([y for _, y in whole[5 * epoch : 5 * epoch + 5]])
        assert sorted(labels.tolist()) == list(range(N))
    assert not np.array_equal(whole[0][1], whole[5][1])
    # Augmented (flip + crop of the padded image) but still image i with label i.
    originals = np.stack([image for image, _ in split.as_numpy_iterator()]) / 255.0
    x, y = whole[0]
    assert x.dtype == np.float32 and x.shape == (8, *SHAPE)
    assert all(is_crop_of_padded(x[j], originals[y[j]], crop_padding(8)) for j in range(8))
    assert not np.allclose(x, originals[y])


def test_two_workers_slices_are_one_process_batch():
    split = tiny_split()
    arrays = image_pipeline.materialize(split, N, SHAPE)
    augment = image_pipeline.seeded_augmenter("flip_crop", SHAPE)
    one = take(image_pipeline.train_stream(split, N, 8, 5, augment, arrays=arrays), 6)
    ranks = [
        take(image_pipeline.train_stream(split, N, 4, 5, augment, r, 2, arrays=arrays), 6)
        for r in range(2)
    ]
    for step, (x, y) in enumerate(one):
        np.testing.assert_array_equal(np.concatenate([ranks[0][step][1], ranks[1][step][1]]), y)
        np.testing.assert_array_equal(np.concatenate([ranks[0][step][0], ranks[1][step][0]]), x)


# ---- the real run ---------------------------------------------------------------------------
RUN = [
    "train-images",
    "--model", "cifar_resnet8", "--width", "4",
    "--train-limit", "256", "--eval-limit", "32",
    "--batch-size", "64", "--micro-batch-size", "32", "--epochs", "2",
    "--method", "conadv", "--staleness", "1", "--adv-eps", "4",
    "--augment", "flip_crop", "--seed", "3",
    "--checkpoint-every", "1", "--verbose", "0",
]  # fmt: skip
# 4 steps per epoch, 8 in all; every step after the first trains on the buffered batch.


def strip(path: str) -> str:
    """Variable path without Keras' per-process layer-name counters."""
    return re.sub(r"_\d+(?=/|$)", "", path)


def final_state(directory) -> tuple[dict, list[np.ndarray]]:
    path = checkpointing.latest_checkpoint(str(directory))
    with np.load(os.path.join(path, "state.npz")) as data:
        return checkpointing.read_meta(path), [data[k] for k in sorted(data.files)]


@pytest.mark.parametrize("attack_pass", ["separate", "shared"])
def test_conadv_stopped_mid_epoch_and_at_an_epoch_boundary_resumes_exactly(tmp_path, attack_pass):
    """The five runs go through one subprocess with deterministic kernels (``cli_runs``):
    the buffer holds ``sign`` of input gradients, and a gradient near zero summed in
    another order (oneDNN under load) flipped one pixel by twice the step once."""
    run = [*RUN, "--attack-pass", attack_pass]
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    metrics = tmp_path / "resumed.json"
    runs = [
        {"argv": [*run, "--checkpoint-dir", whole], "checkpoint_dir": whole},
        {"argv": [*run, "--checkpoint-dir", cut, "--stop-at-step", "3"], "checkpoint_dir": cut},
        {
            "argv": [*run, "--checkpoint-dir", cut, "--resume", "--stop-at-step", "4"]
            + ["--metrics-out", str(metrics)],
            "checkpoint_dir": cut,
        },
        {"argv": [*run, "--checkpoint-dir", cut, "--resume"], "checkpoint_dir": cut},
    ]
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    out = tmp_path / "out.json"
    run_checked(
        [sys.executable, WORKERS / "cli_runs.py", tmp_path / "runs.json", out],
        env=deterministic_env(),
    )
    results = json.loads(out.read_text())
    assert [r["status"] for r in results] == [0, 0, 0, 0]
    assert results[1]["position"] == [3, 0, 3]  # stopped mid-epoch
    assert results[2]["position"] == [4, 1, 0]  # resumed, stopped at an epoch boundary
    resumed = json.loads(metrics.read_text())
    assert resumed["steps_run"] == 1
    # Step 3 of the resumed process trained on the restored buffer, not a fresh attack.
    assert resumed["history"]["stale_fraction"] == [1.0]

    meta_whole, whole_state = final_state(whole)
    meta_cut, cut_state = final_state(cut)
    assert meta_whole["global_step"] == meta_cut["global_step"] == 8
    paths = meta_whole["paths"]
    assert [strip(p) for p in paths] == [strip(p) for p in meta_cut["paths"]]
    buffer = next(i for i, p in enumerate(paths) if p.endswith("adv_buffer_images"))
    assert np.abs(whole_state[buffer]).max() > 0  # the in-flight adversarial batch is saved
    # Weights, BN statistics (main and auxiliary), LARS slots and step, the adversarial
    # buffer (images and labels) and its step counter.
    for path, a, b in zip(paths, whole_state, cut_state):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)


def test_resume_needs_a_checkpoint_dir(capsys):
    assert cli.main(["train-images", "--resume"]) == 2
    assert "--resume needs --checkpoint-dir" in capsys.readouterr().err
