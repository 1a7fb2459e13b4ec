"""The private Keras and TensorFlow names of ``adv_large_batch.keras_internals``.

An upgrade that renames one fails here, in one place, before anything else runs into it:
every name ``keras_internals`` reaches exists on a real compiled model, layer and optimizer
of the installed Keras and does what the library relies on.  And no other module of the
library names one (``test_only_keras_internals_names_them``), so this file and that module
are all there is to audit.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch import keras_internals as ki

REPO = Path(__file__).parent.parent.parent
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

#: Names no module but ``keras_internals`` may reach: every private attribute it lists,
#: TensorFlow's internal namespaces, and the private modules below.
BANNED_ATTRIBUTES = {
    *(name for names in ki.PRIVATE_NAMES.values() for name in names),
    "__internal__",
    "experimental_acd_manager",
}
BANNED_MODULES = ("keras.src", "tensorflow.python")


def compiled_model(weight_decay: float | None = None) -> keras.Model:
    inputs = keras.Input((3,))
    hidden = keras.layers.Dropout(0.5, name="drop")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(hidden))
    optimizer = keras.optimizers.SGD(0.1, weight_decay=weight_decay)
    model.compile(optimizer=optimizer, loss=CE, metrics=["accuracy"])
    return model


def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(8, 3)).astype("float32"), rng.integers(0, 2, 8).astype("int32")


# ---- every name exists on real objects ------------------------------------------------------
def test_every_private_name_exists_on_a_compiled_model_layer_and_optimizer():
    model = compiled_model()
    model.optimizer.build(model.trainable_variables)
    objects = {
        "model": model,
        "layer": model.get_layer("drop"),
        "optimizer": model.optimizer,
    }
    missing = [
        f"{kind}.{name}"
        for kind, names in ki.PRIVATE_NAMES.items()
        for name in names
        if not hasattr(objects[kind], name)
    ]
    missing += [
        f"{kind}.{name}"
        for kind, names in ki.OVERRIDDEN_HOOKS.items()
        for name in names
        if not callable(getattr(objects[kind], name, None))
    ]
    assert not missing, f"Keras {keras.__version__} lacks: {missing}"
    # The inner optimizer of a mixed-precision run has them too.
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    assert hasattr(scaled.inner_optimizer, "_all_reduce_sum_gradients")
    # TensorFlow's: the internal namespaces and the graph attribute.
    assert callable(tf.__internal__.get_enclosing_xla_context)
    assert callable(tf.__internal__.distribute.strategy_supports_no_merge_call)

    @tf.function
    def has_acd_manager() -> tf.Tensor:
        graph = tf.compat.v1.get_default_graph()
        return tf.constant(hasattr(graph, "experimental_acd_manager"))

    assert bool(has_acd_manager())


# ---- and each does what the library relies on -----------------------------------------------
def test_compiled_loss_metrics_and_loss_tracker():
    model = compiled_model()
    x, y = batch()
    logits = model(x, training=False)
    want = float(CE(y, logits))
    assert float(ki.compute_loss(model, x, y, logits, None)) == pytest.approx(want, rel=1e-6)
    assert float(ki.compile_loss(model)(y, logits)) == pytest.approx(want, rel=1e-6)
    metrics = ki.compile_metrics(model)
    metrics.update_state(y, logits, None)
    assert "accuracy" in {m.name for m in metrics.metrics}
    tracker = keras.metrics.Mean(name="loss")
    ki.replace_loss_tracker(model, tracker)
    assert ki.loss_tracker(model) is tracker
    assert any(m is tracker for m in model.metrics)  # Keras logs ``loss`` from it


def test_symbolic_build_creates_the_variables_before_tracing():
    model = compiled_model()
    x, y = batch()
    spec = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).element_spec
    assert not model.optimizer.built and not ki.compile_metrics(model).built
    ki.symbolic_build(model, spec)
    assert model.optimizer.built and ki.compile_metrics(model).built


def test_distribute_strategy_is_the_creation_strategy_or_none():
    assert ki.distribute_strategy(compiled_model()) is None
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        assert ki.distribute_strategy(compiled_model()) is strategy
        assert not ki.strategy_supports_no_merge_call()
    assert ki.strategy_supports_no_merge_call()


def test_flatten_layers_and_the_dropout_seed_generators():
    model = compiled_model()
    layers = ki.flatten_layers(model, include_self=True, recursive=True)
    assert layers[0] is model
    assert {"drop", "head"} <= {layer.name for layer in layers}
    generators = ki.own_seed_generators(model.get_layer("drop"))
    assert generators and all(isinstance(g, keras.random.SeedGenerator) for g in generators)
    assert not ki.own_seed_generators(model.get_layer("head"))


def test_optimizer_internals():
    model = compiled_model(weight_decay=0.1)
    optimizer = model.optimizer
    variables = model.trainable_variables
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.build(variables)
    assert [id(v) for v in ki.built_variables(optimizer)] == [id(v) for v in variables]
    assert [ki.variable_index(optimizer, v) for v in variables] == list(range(len(variables)))
    decays = {v.name: ki.uses_weight_decay(optimizer, v) for v in variables}
    assert decays == {"kernel": True, "bias": False}
    pairs = [(tf.ones_like(v), v) for v in variables]
    ki.disable_gradient_all_reduce(optimizer)
    reduced = optimizer._all_reduce_sum_gradients(pairs)
    assert len(reduced) == len(pairs) and all(a is b for a, b in zip(reduced, pairs))


def test_keras_still_calls_the_overridden_weight_decay_hook():
    calls = []

    class Recording(keras.optimizers.SGD):
        def _apply_weight_decay(self, variables):
            calls.append(len(variables))

    variable = keras.Variable(np.ones(2, "float32"))
    Recording(0.1, weight_decay=0.1).apply([tf.ones(2)], [variable])
    assert calls == [1]


def test_the_global_seed_and_the_step_timer_switches():
    keras.utils.set_random_seed(1234)
    assert ki.global_random_seed() == 1234
    wanted = os.environ.get("TF_DETERMINISTIC_OPS", "0").lower() in ("1", "true")
    assert ki.op_determinism_enabled() is wanted  # tests/processes.py sets it in subprocesses
    seen = []

    def record(x: tf.Tensor) -> tf.Tensor:
        seen.append(ki.in_xla_context())
        if wanted:  # op determinism refuses tf.timestamp
            return x + 1
        stamp = tf.timestamp()
        ki.run_independently(stamp.op)
        return x + tf.cast(stamp > 0, x.dtype)

    tf.function(record, jit_compile=False)(tf.constant(1.0))
    seen.append(ki.in_xla_context())  # eager
    traced_xla = []

    @tf.function(jit_compile=True)
    def under_xla(x: tf.Tensor) -> tf.Tensor:
        traced_xla.append(ki.in_xla_context())
        return x + 1

    under_xla(tf.constant(1.0))
    assert seen == [False, False] and traced_xla == [True]


# ---- nobody else reaches them -------------------------------------------------------------------
def private_uses(source: str) -> list[str]:
    """``line: what`` for every banned name the code of ``source`` reaches, in line order
    (comments and docstrings do not count)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in BANNED_ATTRIBUTES:
            found.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in {
            "getattr",
            "hasattr",
            "setattr",
            "delattr",
        }:
            for arg in node.args[1:2]:
                if isinstance(arg, ast.Constant) and arg.value in BANNED_ATTRIBUTES:
                    found.append((node.lineno, f"{node.func.id}(..., {arg.value!r})"))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(BANNED_MODULES):
                    found.append((node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            if any(m == b or m.startswith(b + ".") for m in modules for b in BANNED_MODULES):
                found.append((node.lineno, f"from {node.module} import ..."))
    return [f"{line}: {what}" for line, what in sorted(found)]


def test_only_keras_internals_names_them():
    uses = []
    for root in ("adv_large_batch", "models"):
        for path in sorted((REPO / root).rglob("*.py")):
            if path == REPO / "adv_large_batch" / "keras_internals.py":
                continue
            rel = path.relative_to(REPO)
            uses += [f"{rel}:{use}" for use in private_uses(path.read_text())]
    assert not uses, "private Keras/TensorFlow names outside keras_internals:\n" + "\n".join(uses)


def test_the_check_sees_each_kind_of_use():
    """``private_uses`` finds what it must (so the test above cannot pass by seeing nothing)."""
    source = (
        '"""Docs may say model._compute_loss and keras.src."""\n'
        "import tensorflow.python.framework\n"
        "from keras.src.utils import rng_utils\n"
        "from keras import src\n"
        "def f(model, opt, layer):\n"
        "    # a comment about ._compile_metrics\n"
        "    model._compute_loss(x=1)\n"
        "    getattr(model, '_compile_loss', None)\n"
        "    opt._all_reduce_sum_gradients = None\n"
        "    layer._flatten_layers()\n"
        "    return tf.__internal__\n"
    )
    assert [use.split(":")[0] for use in private_uses(source)] == [
        "2",
        "3",
        "4",
        "7",
        "8",
        "9",
        "10",
        "11",
    ]
    for name in ki.PRIVATE_NAMES["model"]:
        assert private_uses(f"m.{name}\n") == [f"1: .{name}"]
