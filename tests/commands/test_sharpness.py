"""Sharpness: Hessian-vector products, power iteration, and the `sharpness` command."""

import json
import math
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch import cli
from adv_large_batch.data import image_datasets
from adv_large_batch.engine import checkpointing
from adv_large_batch.flags import ConfigError
from adv_large_batch.sharpness import (
    hessian_vector_product,
    make_hvp,
    top_hessian_eigenvalue,
)
from tests.tiny_bert import tiny_classifier

SHAPES = [(4,), (2, 4)]  # x = concat(flatten) has 12 entries, split over two variables


def quadratic(a):
    """0.5 x^T A x over two float64 variables, and the variables."""
    rng = np.random.default_rng(1)
    variables = [tf.Variable(rng.standard_normal(s)) for s in SHAPES]

    def loss_fn():
        x = tf.concat([tf.reshape(v, [-1]) for v in variables], 0)
        return 0.5 * tf.tensordot(x, tf.linalg.matvec(tf.constant(a), x), 1)

    return loss_fn, variables


def split(x):
    out, start = [], 0
    for s in SHAPES:
        n = int(np.prod(s))
        out.append(tf.constant(x[start : start + n].reshape(s)))
        start += n
    return out


def with_spectrum(eigenvalues, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((12, 12)))
    return (q * np.asarray(eigenvalues, float)) @ q.T


@pytest.mark.parametrize("kind", ["psd", "spectrum"])
def test_power_iteration_recovers_the_top_eigenvalue_of_a_quadratic(kind):
    if kind == "psd":
        m = np.random.default_rng(3).standard_normal((12, 12))
        a = m @ m.T / 12
    else:  # indefinite, the top eigenvalue largest in magnitude
        a = with_spectrum([6.0, 3.5, 2.0, 1.0, 0.5, 0.1, 0.0, -0.2, -1.0, -2.0, -3.0, -4.0])
    top = np.linalg.eigvalsh(a)[-1]
    loss_fn, variables = quadratic(a)
    found = top_hessian_eigenvalue(loss_fn, variables, iterations=500, tolerance=1e-9, seed=0)
    assert found["eigenvalue"] == pytest.approx(top, rel=1e-3)
    assert found["converged"] and found["iterations"] == len(found["history"]) < 500
    assert found["history"][-1] == found["eigenvalue"]


def test_power_iteration_stops_at_the_tolerance_or_the_iteration_budget():
    a = with_spectrum([5.0, 4.9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])  # tiny gap: slow
    loss_fn, variables = quadratic(a)
    capped = top_hessian_eigenvalue(loss_fn, variables, iterations=3, tolerance=0.0)
    assert capped["iterations"] == 3 and not capped["converged"]
    full = top_hessian_eigenvalue(loss_fn, variables, iterations=40, tolerance=0.0)["history"]
    tol = 1e-2
    first = next(k for k in range(1, 40) if abs(full[k] - full[k - 1]) < tol * abs(full[k]))
    loose = top_hessian_eigenvalue(loss_fn, variables, iterations=40, tolerance=tol)
    assert loose["converged"] and loose["iterations"] == first + 1 < 40
    np.testing.assert_allclose(loose["history"], full[: first + 1], rtol=1e-12)
    # Seeded: the same seed gives the same history, another seed another one.
    again = top_hessian_eigenvalue(loss_fn, variables, iterations=3, tolerance=0.0)
    other = top_hessian_eigenvalue(loss_fn, variables, iterations=3, tolerance=0.0, seed=1)
    assert capped["history"] == again["history"] != other["history"]
    with pytest.raises(ValueError, match="iterations must be >= 1, got 0"):
        top_hessian_eigenvalue(loss_fn, variables, iterations=0)


def test_hvp_of_a_quadratic_is_a_times_v():
    m = np.random.default_rng(5).standard_normal((12, 12))
    a = m + m.T
    loss_fn, variables = quadratic(a)
    v = np.random.default_rng(6).standard_normal(12)
    expected = a @ v
    eager = hessian_vector_product(loss_fn, variables, split(v))
    compiled = make_hvp(loss_fn, variables)(split(v))
    for got in (eager, compiled):
        assert [tuple(g.shape) for g in got] == SHAPES
        np.testing.assert_allclose(
            np.concatenate([g.numpy().ravel() for g in got]), expected, rtol=1e-12, atol=1e-12
        )


def test_hvp_matches_a_finite_difference_of_gradients_on_a_keras_model():
    keras.utils.set_random_seed(0)
    net = keras.Sequential(
        [
            keras.Input((3,), dtype="float64"),
            keras.layers.Dense(5, activation="tanh", dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((16, 3)))
    y = tf.constant(rng.standard_normal((16, 1)))

    def loss_fn():
        return tf.reduce_mean(tf.square(net(x, training=False) - y))

    variables = net.trainable_variables
    v = [tf.constant(rng.standard_normal(tuple(w.shape))) for w in variables]
    hv = make_hvp(loss_fn, variables)(v)

    def grads_at(sign, eps=1e-5):
        for w, d in zip(variables, v):
            w.assign_add(sign * eps * d)
        with tf.GradientTape() as tape:
            loss = loss_fn()
        g = [t.numpy() for t in tape.gradient(loss, variables)]
        for w, d in zip(variables, v):
            w.assign_sub(sign * eps * d)
        return g

    plus, minus = grads_at(+1), grads_at(-1)
    for h, gp, gm in zip(hv, plus, minus):
        np.testing.assert_allclose(h.numpy(), (gp - gm) / 2e-5, rtol=1e-5, atol=1e-8)
    assert np.abs(np.concatenate([h.numpy().ravel() for h in hv])).max() > 1e-3


def test_match_saved_paths_exact_or_without_keras_counters_in_order():
    saved = ["adv_step", "conv2d/kernel", "conv2d_1/kernel", "dense/kernel", "sgd/iteration"]
    assert checkpointing.match_saved_paths(["dense/kernel", "conv2d/kernel"], saved) == [3, 1]
    # The same network built again in one process: every layer number shifted.
    wanted = ["conv2d_2/kernel", "conv2d_3/kernel", "dense_1/kernel"]
    assert checkpointing.match_saved_paths(wanted, saved) == [1, 2, 3]
    with pytest.raises(ConfigError, match="no variable 'dense_1/bias'"):
        checkpointing.match_saved_paths(["dense_1/bias"], saved, "ckpt-1")


def test_restore_variables_loads_only_the_network_weights(tmp_path):
    trained = tiny_classifier(seed=0)
    trained.compile(optimizer="sgd")
    trained.optimizer.build(trained.trainable_variables)
    path = checkpointing.save_checkpoint(str(tmp_path), trained, {"global_step": 3})
    fresh = tiny_classifier(seed=1)
    weights = [w for w in fresh.weights if keras.backend.is_float_dtype(w.dtype)]
    assert not np.allclose(weights[0].numpy(), trained.weights[0].numpy())
    meta = checkpointing.restore_variables(path, weights)
    assert meta["global_step"] == 3
    for a, b in zip(trained.trainable_variables, fresh.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


FINETUNE = [
    "finetune",
    "--model",
    "tiny-random",
    "--train-limit",
    "64",
    "--eval-limit",
    "8",
    "--batch-size",
    "32",
    "--epochs",
    "1",
    "--max-seq-length",
    "16",
    "--method",
    "scala",
    "--lr",
    "1e-3",
    "--verbose",
    "0",
]  # 2 steps


def test_sharpness_of_a_finetune_checkpoint_end_to_end(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert cli.main([*FINETUNE, "--checkpoint-dir", str(ckpt)]) == 0
    final = checkpointing.latest_checkpoint(str(ckpt))
    meta = checkpointing.read_meta(final)
    assert meta["global_step"] == 2  # the end of training is checkpointed
    assert meta["command"] == "finetune" and meta["adversarial"]["method"] == "scala"

    out = tmp_path / "sharp" / "s.json"
    args = ["sharpness", "--checkpoint", str(ckpt), "--batch-size", "16", "--iterations", "6"]
    assert cli.main([*args, "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert math.isfinite(result["eigenvalue"]) and result["eigenvalue"] > 0
    assert 1 <= result["iterations"] == len(result["history"]) <= 6
    assert result["eigenvalue"] == result["history"][-1]
    assert result["checkpoint"] == final and result["checkpoint_step"] == 2
    assert result["batch_size"] == 16 and result["method"] == "scala"
    assert result["command"] == "finetune" and math.isfinite(result["loss"])
    printed = capsys.readouterr().out
    assert f"top Hessian eigenvalue {result['eigenvalue']:.6g}" in printed


def test_one_run_record_and_checkpoints_of_the_old_shape_still_load(tmp_path):
    """meta.json holds the run record that is also --metrics-out's ``config``; a checkpoint
    written before (the run's flags under ``config``, no workers or backend) gives the same
    sharpness."""
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "m.json"
    assert cli.main([*FINETUNE, "--checkpoint-dir", str(ckpt), "--metrics-out", str(metrics)]) == 0
    final = checkpointing.latest_checkpoint(str(ckpt))
    meta = checkpointing.read_meta(final)
    record = json.loads(metrics.read_text())["config"]
    assert record == {k: meta[k] for k in checkpointing.RUN_KEYS}
    assert record["command"] == "finetune" and record["run"]["model"] == "tiny-random"

    args = ["sharpness", "--checkpoint", final, "--batch-size", "16", "--iterations", "3"]
    assert cli.main([*args, "--json-out", str(tmp_path / "new.json")]) == 0
    old = {k: v for k, v in meta.items() if k not in ("run", "workers", "backend")}
    old["config"] = meta["run"]
    with open(os.path.join(final, "meta.json"), "w") as f:
        json.dump(old, f)
    assert checkpointing.run_meta(final, ("finetune",)).run == meta["run"]
    assert cli.main([*args, "--json-out", str(tmp_path / "old.json")]) == 0
    new_result = json.loads((tmp_path / "new.json").read_text())
    old_result = json.loads((tmp_path / "old.json").read_text())
    assert old_result["method"] == new_result["method"] == "scala"
    assert old_result["loss"] == pytest.approx(new_result["loss"], rel=1e-6)
    assert old_result["eigenvalue"] == pytest.approx(new_result["eigenvalue"], rel=1e-5)


@pytest.mark.skipif(
    not os.path.isdir(image_datasets.FASHION_MNIST_DIR),
    reason="apt-get install dataset-fashion-mnist",
)
def test_sharpness_of_a_train_images_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    train = ["train-images", "--method", "conadv", "--model", "cifar_resnet8", "--width", "4"]
    train += ["--train-limit", "128", "--eval-limit", "32", "--batch-size", "64", "--epochs", "1"]
    assert cli.main([*train, "--verbose", "0", "--checkpoint-dir", str(ckpt)]) == 0
    out = tmp_path / "s.json"
    args = ["sharpness", "--checkpoint", str(ckpt), "--batch-size", "32", "--iterations", "4"]
    assert cli.main([*args, "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["command"] == "train-images" and result["method"] == "conadv"
    assert math.isfinite(result["eigenvalue"]) and result["checkpoint_step"] == 2


def write_checkpoint(folder, meta=None):
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps(meta or {"global_step": 1, "paths": []}))
    np.savez(folder / "state.npz")


def test_checkpoint_is_a_run_folder_or_one_ckpt_folder(tmp_path):
    for step in (2, 4):
        write_checkpoint(tmp_path / f"ckpt-{step:08d}")
    (tmp_path / "ckpt-00000006.partial").mkdir()
    newest = str(tmp_path / "ckpt-00000004")
    assert checkpointing.resolve_checkpoint(str(tmp_path)) == newest
    assert checkpointing.resolve_checkpoint(newest) == newest
    older = str(tmp_path / "ckpt-00000002")
    assert checkpointing.resolve_checkpoint(older + "/") == older + "/"


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        (None, [], "does not exist"),
        ("partial", [], "holds no complete checkpoint"),
        ("no-state", [], "is not a complete checkpoint (no state.npz)"),
        ("old-meta", [], "meta.json has no command, config, adversarial"),
        ("ok", ["--iterations", "0"], "--iterations must be >= 1, got 0"),
        ("ok", ["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        ("ok", ["--tolerance", "-1"], "--tolerance must be >= 0, got -1.0"),
    ],
)
def test_bad_sharpness_input_exits_2_naming_the_value(tmp_path, capsys, setup, extra, message):
    run = tmp_path / "run"
    target = run
    if setup == "partial":
        (run / "ckpt-00000005.partial").mkdir(parents=True)
    elif setup == "no-state":
        target = run / "ckpt-00000005"
        target.mkdir(parents=True)
        (target / "meta.json").write_text("{}")
    elif setup in ("old-meta", "ok"):
        write_checkpoint(run / "ckpt-00000005")
    assert cli.main(["sharpness", "--checkpoint", str(target), *extra]) == 2
    err = capsys.readouterr().err
    assert "adv-large-batch sharpness: error:" in err and message in err
    if setup != "ok":
        assert repr(str(target)) in err  # the message names the path given
