"""Sharpness: Hessian-vector products, power iteration, and the `sharpness` command, on
TensorFlow and (in subprocesses, TensorFlow blocked) on JAX."""

import contextlib
import io
import json
import math
import os
import shutil
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch import cli
from adv_large_batch.commands.sharpness import backend_problem
from adv_large_batch.data import image_datasets
from adv_large_batch.engine import checkpointing
from adv_large_batch.flags import ConfigError
from adv_large_batch.sharpness import (
    hessian_vector_product,
    make_hvp,
    network_hvp,
    start_vector,
    top_hessian_eigenvalue,
)
from tests.commands.test_finetune_jax import jax_cli, jax_env
from tests.processes import arrays_on_backend, run_checked
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


def numpy_hvp(a):
    """``H v = A v`` of ``0.5 x^T A x`` on vectors split as ``SHAPES`` (NumPy only)."""

    def hvp(vector):
        x = np.concatenate([np.ravel(v) for v in vector])
        return [t.numpy() for t in split(a @ x)]

    return hvp


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
    found = top_hessian_eigenvalue(numpy_hvp(a), SHAPES, iterations=500, tolerance=1e-9, seed=0)
    assert found["eigenvalue"] == pytest.approx(top, rel=1e-3)
    assert found["converged"] and found["iterations"] == len(found["history"]) < 500
    assert found["history"][-1] == found["eigenvalue"]


def test_power_iteration_stops_at_the_tolerance_or_the_iteration_budget():
    a = with_spectrum([5.0, 4.9, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1])  # tiny gap: slow
    hvp = numpy_hvp(a)
    capped = top_hessian_eigenvalue(hvp, SHAPES, iterations=3, tolerance=0.0)
    assert capped["iterations"] == 3 and not capped["converged"]
    full = top_hessian_eigenvalue(hvp, SHAPES, iterations=40, tolerance=0.0)["history"]
    tol = 1e-2
    first = next(k for k in range(1, 40) if abs(full[k] - full[k - 1]) < tol * abs(full[k]))
    loose = top_hessian_eigenvalue(hvp, SHAPES, iterations=40, tolerance=tol)
    assert loose["converged"] and loose["iterations"] == first + 1 < 40
    np.testing.assert_allclose(loose["history"], full[: first + 1], rtol=1e-12)
    # Seeded: the same seed gives the same history, another seed another one.
    again = top_hessian_eigenvalue(hvp, SHAPES, iterations=3, tolerance=0.0)
    other = top_hessian_eigenvalue(hvp, SHAPES, iterations=3, tolerance=0.0, seed=1)
    assert capped["history"] == again["history"] != other["history"]
    # The same through TensorFlow's double backprop of the quadratic.
    tf_hvp = make_hvp(*quadratic(a))
    through_tf = top_hessian_eigenvalue(tf_hvp, SHAPES, iterations=3, tolerance=0.0)
    np.testing.assert_allclose(through_tf["history"], capped["history"], rtol=1e-12)


@pytest.mark.parametrize(
    "shapes, kwargs, message",
    [
        (SHAPES, {"iterations": 0}, "iterations must be >= 1, got 0"),
        (SHAPES, {"tolerance": -1.0}, "tolerance must be >= 0, got -1.0"),
        ([], {}, r"no weights to take the Hessian over: shapes \[\]"),
        ([(4,), (8,)], {}, r"hvp returned arrays of shapes \[\(4,\), \(2, 4\)\], expected"),
    ],
)
def test_bad_power_iteration_input_is_refused_naming_the_value(shapes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        top_hessian_eigenvalue(numpy_hvp(np.eye(12)), shapes, **kwargs)


def test_the_start_vector_is_a_seeded_unit_vector_of_numpy():
    v = start_vector(SHAPES, seed=3)
    assert [x.shape for x in v] == SHAPES and all(x.dtype == np.float64 for x in v)
    assert sum(float(np.sum(x * x)) for x in v) == pytest.approx(1.0, rel=1e-15)
    rng = np.random.default_rng(3)
    drawn = np.concatenate([rng.standard_normal(s).ravel() for s in SHAPES])
    got = np.concatenate([x.ravel() for x in v])
    np.testing.assert_allclose(got, drawn / np.linalg.norm(drawn), rtol=1e-14)


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


def test_jax_hvp_equals_tensorflow_double_backprop_without_tensorflow(tmp_path):
    """``network_hvp`` on JAX (``jax.jvp`` of ``jax.grad`` through ``stateless_call``, in a
    process where TensorFlow cannot be imported) equals TensorFlow's double backprop on the
    same float64 network, weights, batch and direction; ``make_jax_hvp`` of a quadratic
    ``0.5 x^T A x`` (``A`` passed as data) gives ``A v``."""
    got = arrays_on_backend("jax", "jax_hvp.py", tmp_path / "jax.npz", "--no-tensorflow")
    assert not got["tensorflow_imported"]
    np.testing.assert_allclose(got["quadratic/hv"], got["quadratic/a"] @ got["quadratic/v"],
                               rtol=1e-12, atol=1e-12)  # fmt: skip
    net = keras.Sequential(
        [
            keras.Input((3,), dtype="float64"),
            keras.layers.Dense(5, activation="sigmoid", dtype="float64"),
            keras.layers.Dense(1, dtype="float64"),
        ]
    )
    count = len(net.trainable_variables)
    net.set_weights([got[f"network/w{i}"] for i in range(count)])
    loss = keras.losses.MeanSquaredError(dtype="float64")
    hvp = network_hvp(net, loss, got["network/x"], got["network/y"])
    want = hvp([got[f"network/v{i}"] for i in range(count)])
    for i, w in enumerate(want):
        np.testing.assert_allclose(got[f"network/hv{i}"], w.numpy(), rtol=1e-10, atol=1e-12)
    assert max(np.abs(w.numpy()).max() for w in want) > 1e-3


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


#: The sharpness of the shared checkpoint: a fixed number of products on both backends.
SHARPNESS = ["sharpness", "--batch-size", "16", "--iterations", "5", "--tolerance", "0"]


@pytest.fixture(scope="module")
def finetune_run(tmp_path_factory):
    """One tiny ScaLA finetune on TensorFlow (2 steps) and ``SHARPNESS`` of its checkpoint
    there: ``ckpt`` (the run's --checkpoint-dir), ``result`` (the --json-out) and
    ``printed`` (what the command printed)."""
    folder = tmp_path_factory.mktemp("finetune")
    ckpt, out = folder / "ckpt", folder / "sharp" / "s.json"
    assert cli.main([*FINETUNE, "--checkpoint-dir", str(ckpt)]) == 0
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main([*SHARPNESS, "--checkpoint", str(ckpt), "--json-out", str(out)])
    assert status == 0
    return SimpleNamespace(
        ckpt=ckpt, result=json.loads(out.read_text()), printed=printed.getvalue()
    )


def test_sharpness_of_a_finetune_checkpoint_end_to_end(finetune_run):
    final = checkpointing.latest_checkpoint(str(finetune_run.ckpt))
    meta = checkpointing.read_meta(final)
    assert meta["global_step"] == 2  # the end of training is checkpointed
    assert meta["command"] == "finetune" and meta["adversarial"]["method"] == "scala"

    result = finetune_run.result
    assert math.isfinite(result["eigenvalue"]) and result["eigenvalue"] > 0
    assert result["iterations"] == len(result["history"]) == 5 and not result["converged"]
    assert result["eigenvalue"] == result["history"][-1]
    assert result["checkpoint"] == final and result["checkpoint_step"] == 2
    assert result["batch_size"] == 16 and result["method"] == "scala"
    assert result["command"] == "finetune" and math.isfinite(result["loss"])
    assert result["backend"] == "tensorflow" and result["num_weights"] > 1000
    assert f"top Hessian eigenvalue {result['eigenvalue']:.6g}" in finetune_run.printed


def test_sharpness_on_jax_without_tensorflow_equals_tensorflow(finetune_run, tmp_path):
    """One TensorFlow checkpoint, the same batch and start vector: the JAX backend (forward
    over reverse, TensorFlow blocked) reports TensorFlow's estimates to float32 rounding
    (each to 1e-4 of the eigenvalue: the first, of a random direction, is near 0).
    Flags only the run's training used, which JAX could not train with (``--strategy
    horovod``, ``--precision mixed_float16``), do not stop it.  Before: refused on JAX."""
    final = checkpointing.latest_checkpoint(str(finetune_run.ckpt))
    copy = tmp_path / "horovod" / os.path.basename(final)
    shutil.copytree(final, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["run"].update(strategy="horovod", precision="mixed_float16")
    (copy / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "jax.json"
    proc = run_checked(jax_cli(*SHARPNESS, "--checkpoint", str(copy), "--json-out", str(out)),
                       jax_env())  # fmt: skip
    on_tf, on_jax = finetune_run.result, json.loads(out.read_text())
    assert f"top Hessian eigenvalue {on_jax['eigenvalue']:.6g}" in proc.stdout
    assert on_jax["backend"] == "jax" and on_jax["checkpoint_step"] == 2
    assert on_jax["iterations"] == on_tf["iterations"] == 5
    assert on_jax["num_weights"] == on_tf["num_weights"]
    assert on_jax["loss"] == pytest.approx(on_tf["loss"], rel=1e-5)
    assert on_jax["eigenvalue"] == pytest.approx(on_tf["eigenvalue"], rel=1e-4)
    scale = abs(on_tf["eigenvalue"])
    np.testing.assert_allclose(on_jax["history"], on_tf["history"], rtol=0, atol=1e-4 * scale)


def test_an_imagenet_checkpoint_is_refused_on_jax_naming_the_alternative():
    def meta(command, dataset):
        return SimpleNamespace(command=command, run={"dataset": dataset})

    message = backend_problem("ckpt-00000002", meta("train-images", "imagenet2012"), "jax")
    for part in ("'ckpt-00000002'", "--dataset imagenet2012", "KERAS_BACKEND=tensorflow"):
        assert part in message
    for command, dataset in [("train-images", "fashion_mnist"), ("train-images", "folder"),
                             ("finetune", None)]:  # fmt: skip
        assert backend_problem("c", meta(command, dataset), "jax") is None
    assert backend_problem("c", meta("train-images", "imagenet2012"), "tensorflow") is None


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
