"""Every private Keras (and TensorFlow) name the library reaches, each behind one function.

The trainer, the optimizers and the randomness need a few things that Keras 3.15 and
TensorFlow 2.21 keep private (an underscore attribute, ``keras.src``,
``tensorflow.python``, ``tf.__internal__``).  Nothing else in ``adv_large_batch`` or
``models`` names them: it calls the function here that reaches the name, so a Keras or
TensorFlow upgrade (or a port to another Keras backend, where the TensorFlow-only names
below do not exist) has this one file to audit.  Each docstring says what is reached,
why the library needs it and which test fails if it changes.

``tests/engine/test_keras_internals.py`` checks that every name in ``PRIVATE_NAMES``
and ``OVERRIDDEN_HOOKS`` exists on a real compiled Keras model and optimizer of the
installed version, and that no other module of the library names one.

A bottom-layer module: it imports only Keras and the standard library at import time, and
TensorFlow inside the functions of the TensorFlow section (so the modules that reach a
Keras name import under ``KERAS_BACKEND=jax`` without TensorFlow).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

#: The private attributes reached here, by the kind of Keras object that has them.
PRIVATE_NAMES: dict[str, tuple[str, ...]] = {
    "model": (
        "_compute_loss",
        "_compile_loss",
        "_compile_metrics",
        "_loss_tracker",
        "_symbolic_build",
        "_distribute_strategy",
    ),
    "layer": ("_flatten_layers", "_seed_generators"),
    "optimizer": (
        "_all_reduce_sum_gradients",
        "_get_variable_index",
        "_trainable_variables",
        "_use_weight_decay",
    ),
}

#: Private Keras methods that a library class overrides (so Keras must still call them):
#: ``LayerwiseOptimizer._apply_weight_decay`` turns Keras' separate decay pass off, since
#: LAMB and LARS decay inside the update (else the weights decay twice:
#: ``tests/optimizers/test_optimizers.py::test_keras_weight_decay_is_not_applied_twice``).
OVERRIDDEN_HOOKS: dict[str, tuple[str, ...]] = {"optimizer": ("_apply_weight_decay",)}


# ---- the model (Keras' Trainer, TensorFlow backend) -------------------------------------
def compute_loss(
    model: keras.Model, x: Any, y: Any, y_pred: Any, sample_weight: Any, training: bool = True
) -> Any:
    """``model._compute_loss(...)``: the compiled loss plus ``add_loss`` terms.

    Keras' own ``train_step`` calls this wrapper rather than ``compute_loss`` (it also
    serves overrides without the ``training`` argument); the trainer's ``task_loss`` does
    the same, so its loss is exactly the one Keras' step would compute (scaled by
    1/replicas under tf.distribute).  If it goes, every trainer step fails
    (``tests/engine/test_nonfinite.py``, ``tests/scala/test_scala.py``, ...).
    """
    return model._compute_loss(
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
    )


def compile_loss(model: keras.Model) -> Any:
    """``model._compile_loss``: the loss passed to ``compile`` as a callable
    ``(y, y_pred) -> scalar`` without regularisers, or None when there is none.

    ConAdv's attack needs the task loss alone (not ``add_loss`` terms) on a stateless
    forward pass.  If Keras renames it, the attack silently falls back to cross-entropy,
    which is the compiled loss of every ConAdv test: only the existence check of
    ``tests/engine/test_keras_internals.py`` notices.
    """
    return getattr(model, "_compile_loss", None)


def compile_metrics(model: keras.Model) -> Any:
    """``model._compile_metrics``: the metrics passed to ``compile`` (one container with
    ``update_state(y, y_pred, sample_weight)``), or None.

    The trainer updates them once per micro-batch with that micro-batch's predictions
    (Keras' ``compute_metrics`` would also update the loss tracker).  If it goes, every
    training step fails (``tests/engine/test_monitoring.py`` reads the logged
    ``accuracy``).
    """
    return model._compile_metrics


def loss_tracker(model: keras.Model) -> Any:
    """``model._loss_tracker``: the ``Mean`` behind the logged ``loss``."""
    return model._loss_tracker


def replace_loss_tracker(model: keras.Model, tracker: keras.metrics.Metric) -> None:
    """Set ``model._loss_tracker`` (call after ``compile``, which creates Keras' own).

    Keras reports ``loss`` from this tracker (``metrics``, ``get_metrics_result``); the
    trainer puts a ``FiniteMean`` there so that an epoch of non-finite steps logs NaN, not
    0 (``tests/engine/test_nonfinite.py::test_a_fully_nonfinite_epoch_logs_nan_loss_not_zero``).
    """
    model._loss_tracker = tracker


def symbolic_build(model: keras.Model, data_spec: Any) -> None:
    """``model._symbolic_build(data_batch=data_spec)``: create the optimizer's and the
    compiled metrics' variables from a batch's structure, before the step is traced.

    Keras does this itself only under a distribution strategy; elsewhere the first trace
    creates them and ``tf.function`` traces the step a second time.  If it goes, the step
    is traced twice (``tests/engine/test_trace_once.py``).
    """
    model._symbolic_build(data_batch=data_spec)


def distribute_strategy(model: keras.Model) -> Any:
    """``model._distribute_strategy``: the strategy the model was created under, or None
    (unlike the public ``distribute_strategy``, which falls back to the default one).

    Tells ``build_before_tracing`` that ``fit`` runs its own symbolic build.  If Keras
    renames it, ``build_before_tracing`` also builds under a strategy, outside the
    strategy's own build (an error there is swallowed): only the existence check of
    ``tests/engine/test_keras_internals.py`` notices.
    """
    return getattr(model, "_distribute_strategy", None)


# ---- layers ----------------------------------------------------------------------------
def flatten_layers(
    layer: keras.layers.Layer, include_self: bool = True, recursive: bool = True
) -> list[Any]:
    """``layer._flatten_layers(include_self, recursive)``: the layer and every sublayer,
    nested models included, in one fixed order (the same in every process).

    Keras has no public recursive walk (``Model.layers`` is one level).  Used to find the
    dropout seed generators and the split BatchNorm layers; if it goes,
    ``tests/engine/test_dropout_draws.py`` and ``tests/models/test_split_bn.py`` fail.
    """
    return layer._flatten_layers(include_self=include_self, recursive=recursive)


def own_seed_generators(layer: keras.layers.Layer) -> Sequence[Any]:
    """``layer._seed_generators``: the ``keras.random.SeedGenerator``s a layer tracks
    itself (its dropout's), not its sublayers'; empty when it has none.

    The trainer overwrites their state before each forward pass so dropout masks are a
    function of (seed, step, micro-batch).  If Keras renames it, no generator is found and
    the masks come from a running state again: the replicas draw the same masks
    (``tests/scala/test_scala_distributed.py::test_scala_mirrored_strategy_equals_single_device``
    fails; ``tests/engine/test_keras_internals.py`` checks a ``Dropout`` has one).
    """
    return getattr(layer, "_seed_generators", ())


# ---- optimizers ------------------------------------------------------------------------
def _already_reduced(grads_and_vars: Any) -> list[Any]:
    return list(grads_and_vars)


def disable_gradient_all_reduce(optimizer: Any) -> None:
    """Make ``optimizer._all_reduce_sum_gradients`` the identity (where it has one).

    Keras' TensorFlow optimizer sums the replica gradients inside ``apply`` under
    tf.distribute; the trainer hands it gradients it already reduced in replica context
    (so every replica can judge their norm and finiteness), which must not be summed a
    second time.  If Keras stops calling it, the mirrored runs no longer match a single
    device (``tests/engine/test_distributed.py::test_mirrored_strategy_matches_single_device``,
    ``tests/engine/test_nonfinite.py`` under MirroredStrategy).
    """
    if hasattr(optimizer, "_all_reduce_sum_gradients"):
        optimizer._all_reduce_sum_gradients = _already_reduced


def variable_index(optimizer: keras.optimizers.Optimizer, variable: Any) -> int:
    """``optimizer._get_variable_index(variable)``: the variable's position in the list
    the optimizer was built with, the index of its slots (how Keras' own Adam/SGD find
    theirs in ``update_step``).  If it goes, LAMB and LARS cannot step
    (``tests/optimizers/test_optimizers.py``)."""
    return optimizer._get_variable_index(variable)


def built_variables(optimizer: keras.optimizers.Optimizer) -> list[Any]:
    """``optimizer._trainable_variables``: the variables the optimizer was built with, in
    the order of its slots (no public property in Keras 3.15).  Used for the parameter
    groups and the trust-ratio diagnostics, path by path; if it goes,
    ``tests/optimizers/test_optimizers.py::test_describe_parameter_groups_lists_every_variable_once``
    and ``::test_trust_ratio_logger_writes_every_variable`` fail."""
    return optimizer._trainable_variables


def uses_weight_decay(optimizer: keras.optimizers.Optimizer, variable: Any) -> bool:
    """``optimizer._use_weight_decay(variable)``: False for a variable excluded with
    ``exclude_from_weight_decay`` (by variable or by name), True otherwise.

    The path-based decay patterns add to Keras' own exclusions instead of replacing
    them.  If it goes, ``tests/optimizers/test_optimizers.py`` (``test_path_decay_adamw_
    does_not_decay_layernorm``, the LAMB reference with exclusions) fails.
    """
    return optimizer._use_weight_decay(variable)


# ---- global state ----------------------------------------------------------------------
def global_random_seed() -> int | None:
    """The seed of ``keras.utils.set_random_seed``, or None when it was not called
    (``keras.src.utils.rng_utils.get_random_seed``: no public getter in Keras 3.15).

    A trainer without ``seed`` takes it, so a seeded notebook is reproducible.  If it
    goes, ``tests/engine/test_faults.py::test_a_trainer_without_a_seed_takes_keras_global_seed``
    fails.
    """
    from keras.src.utils import rng_utils

    return rng_utils.get_random_seed()


# ---- TensorFlow ------------------------------------------------------------------------
def op_determinism_enabled() -> bool:
    """``tensorflow.python.framework.config.is_op_determinism_enabled()``: whether
    ``TF_DETERMINISTIC_OPS=1`` / ``tf.config.experimental.enable_op_determinism()`` is on
    (no public getter in TF 2.21).

    Op determinism refuses ``tf.timestamp``, so the step timers turn off under it.  If the
    module moves, every step fails at its first trace; if the answer were wrong, the
    deterministic runs (``tests/processes.py`` sets the variable for
    ``tests/engine/test_resume.py`` and ``tests/engine/test_faults.py``) fail on the timer.
    """
    from tensorflow.python.framework import config

    return bool(config.is_op_determinism_enabled())


def in_xla_context() -> bool:
    """``tf.__internal__.get_enclosing_xla_context() is not None``: whether the code being
    traced will be compiled by XLA (``jit_compile=True``), which has no ``tf.timestamp``
    kernel, so the step timers turn off.  If it goes, every step fails at its first trace;
    if the answer were wrong, ``jit_compile=True`` runs fail to compile
    (``tests/engine/test_keras_internals.py`` checks it inside and outside XLA)."""
    import tensorflow as tf

    return tf.__internal__.get_enclosing_xla_context() is not None


def strategy_supports_no_merge_call() -> bool:
    """``tf.__internal__.distribute.strategy_supports_no_merge_call()``: whether the
    current strategy lets ``optimizer.apply`` run inside a ``tf.cond`` in replica context
    (no strategy, one device) or needs a ``merge_call`` (MirroredStrategy), as Keras'
    ``LossScaleOptimizer`` asks.  If it goes, a skipped step under MirroredStrategy fails
    (``tests/engine/test_nonfinite.py::test_skip_under_mirrored_strategy_leaves_weights_and_step_unchanged``)."""
    import tensorflow as tf

    return bool(tf.__internal__.distribute.strategy_supports_no_merge_call())


def run_independently(op: Any) -> None:
    """Take ``op`` out of TensorFlow's automatic control-dependency chain of the graph
    being traced (``FuncGraph.experimental_acd_manager.run_independently``; nothing
    outside a ``tf.function``).

    Stateful ops without a resource input (``tf.timestamp``) are chained in program
    order, across MirroredStrategy replicas too, so a step timer of replica 0 would gate
    replica 1's step.  If it goes, ``tests/engine/test_replica_independence.py`` fails.
    """
    import tensorflow as tf

    manager = getattr(tf.compat.v1.get_default_graph(), "experimental_acd_manager", None)
    if manager is not None:
        manager.run_independently(op)


__all__ = [
    "OVERRIDDEN_HOOKS",
    "PRIVATE_NAMES",
    "built_variables",
    "compile_loss",
    "compile_metrics",
    "compute_loss",
    "disable_gradient_all_reduce",
    "distribute_strategy",
    "flatten_layers",
    "global_random_seed",
    "in_xla_context",
    "loss_tracker",
    "op_determinism_enabled",
    "own_seed_generators",
    "replace_loss_tracker",
    "run_independently",
    "strategy_supports_no_merge_call",
    "symbolic_build",
    "uses_weight_decay",
    "variable_index",
]
