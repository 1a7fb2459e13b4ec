"""LAMB / LARS / parameter groups / diagnostics / OptimizerConfig.

Every expected value is computed independently here (NumPy transcriptions of the
docstring equations, or hand arithmetic), never copied from a run.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.flags import ConfigError, add_arguments, from_args
from adv_large_batch.optimizers import (
    LAMB,
    LARS,
    OptimizerConfig,
    PathDecayAdamW,
    PathDecaySGD,
    TrustRatioLogger,
    WarmupLinearDecay,
    WarmupPolynomialDecay,
    build_optimizer,
    describe_parameter_groups,
)

RNG = np.random.default_rng(1234)


# -- NumPy references (transcriptions of the class docstrings) ----------------------------


def paper_nu(c, lower=0.0, upper=None):
    """ScaLA's nu(c) = max(L, min(c, U)) (Algorithm 1 line 13); ``upper=None``: U = inf."""
    return max(lower, c if upper is None else min(c, upper))


def numpy_lamb(
    weights,
    grads_per_step,
    lr,
    b1=0.9,
    b2=0.999,
    eps=1e-6,
    bias_correction=True,
    wd=0.0,
    lower=0.0,
    upper=None,
    rmin=None,
    rmax=None,
    decay=None,
    adapt=None,
    zero_weight_unscaled=True,
):
    """Returns the weights after each step and the last trust ratios.

    The step is the paper's (ScaLA Algorithm 1 line 13, LAMB Alg. 2):
    ``x <- x - lr * nu(||x||) * u / ||u||`` with ``nu(c) = max(L, min(c, U))``, i.e. the
    trust ratio ``nu(||x||) / ||u||`` (optionally clipped to ``[rmin, rmax]``); ``u = 0``
    takes no step.  One deliberate deviation, switched by ``zero_weight_unscaled``
    (on: what the code does, as NVIDIA's and DeepSpeed's LAMB): where ``||x|| = 0`` and
    L = 0 the ratio is 1, an unscaled step ``lr * u``, instead of ``nu(0) / ||u||`` = 0 (a
    zero-initialised variable would never move); with L > 0 the paper's step stands.
    """
    w = [np.array(x, np.float64) for x in weights]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    decay = decay or [True] * len(w)
    adapt = adapt or [True] * len(w)
    history, ratios = [], []
    for t, grads in enumerate(grads_per_step, start=1):
        ratios = []
        for i, g in enumerate(grads):
            g = np.asarray(g, np.float64)
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat, v_hat = (
                (m[i] / (1 - b1**t), v[i] / (1 - b2**t)) if bias_correction else (m[i], v[i])
            )
            u = m_hat / (np.sqrt(v_hat) + eps) + (wd * w[i] if decay[i] else 0.0)
            w_norm, u_norm = np.linalg.norm(w[i]), np.linalg.norm(u)
            if not adapt[i] or u_norm == 0:  # no layer-wise scaling / no step to scale
                r = 1.0
            elif w_norm == 0 and lower == 0 and zero_weight_unscaled:  # the deviation
                r = 1.0
            else:  # the paper's ratio
                r = paper_nu(w_norm, lower, upper) / u_norm
                r = r if rmin is None else max(r, rmin)
                r = r if rmax is None else min(r, rmax)
            ratios.append(r)
            w[i] = w[i] - lr * r * u
        history.append([x.copy() for x in w])
    return history, ratios


def numpy_lars(
    weights,
    grads_per_step,
    lr,
    momentum=0.9,
    wd=0.0,
    eta=0.001,
    eps=1e-8,
    nesterov=False,
    decay=None,
    adapt=None,
):
    w = [np.array(x, np.float64) for x in weights]
    vel = [np.zeros_like(x) for x in w]
    decay = decay or [True] * len(w)
    adapt = adapt or [True] * len(w)
    history = []
    for grads in grads_per_step:
        for i, g in enumerate(grads):
            g = np.asarray(g, np.float64)
            d = wd if decay[i] else 0.0
            w_norm, g_norm = np.linalg.norm(w[i]), np.linalg.norm(g)
            r = (
                eta * w_norm / (g_norm + d * w_norm + eps)
                if adapt[i] and w_norm > 0 and g_norm > 0
                else 1.0
            )
            local_lr = lr * r
            update = g + d * w[i]
            vel[i] = momentum * vel[i] + local_lr * update
            w[i] = w[i] - (momentum * vel[i] + local_lr * update if nesterov else vel[i])
        history.append([x.copy() for x in w])
    return history


def make_variables(values, paths):
    """Keras variables whose ``path`` is exactly ``paths[i]`` (e.g. ``dense/bias``)."""
    variables = []
    for x, path in zip(values, paths):
        scope, _, name = path.rpartition("/")
        if scope:
            with keras.name_scope(scope):
                variables.append(keras.Variable(np.array(x, np.float32), name=name))
        else:
            variables.append(keras.Variable(np.array(x, np.float32), name=name))
        assert variables[-1].path == path
    return variables


def run_optimizer(optimizer, values, names, grads_per_step):
    variables = make_variables(values, names)
    history = []
    for grads in grads_per_step:
        optimizer.apply([tf.constant(g, tf.float32) for g in grads], variables)
        history.append([v.numpy() for v in variables])
    return history, variables


def random_problem(shapes, steps, zero_index=None):
    values = [RNG.normal(size=s) for s in shapes]
    if zero_index is not None:
        values[zero_index] = np.zeros(shapes[zero_index])
    grads = [[RNG.normal(size=s) for s in shapes] for _ in range(steps)]
    return values, grads


def assert_history_close(ours, reference, rtol=1e-5, atol=1e-6):
    assert len(ours) == len(reference)
    for step, (a, b) in enumerate(zip(ours, reference)):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"step {step + 1}")


# -- LAMB ---------------------------------------------------------------------------------


def test_lamb_matches_keras_lamb_without_decay_clipping_or_exclusions():
    shapes = [(5, 3), (3,), (4, 2)]
    values, grads = random_problem(shapes, steps=6, zero_index=1)
    names = ["a", "b", "c"]
    ours, _ = run_optimizer(
        LAMB(0.01, epsilon=1e-6, weight_decay=0.0, weight_norm_upper=None, no_adapt_patterns=()),
        values,
        names,
        grads,
    )
    theirs, _ = run_optimizer(keras.optimizers.Lamb(0.01, epsilon=1e-6), values, names, grads)
    assert_history_close(ours, theirs)
    assert not np.allclose(ours[-1][0], values[0])  # it did train


@pytest.mark.parametrize("bias_correction", [True, False])
def test_lamb_matches_numpy_reference_with_decay_clip_and_exclusions(bias_correction):
    shapes = [(4, 3), (3,), (2, 2), (3, 2)]
    values, grads = random_problem(shapes, steps=5, zero_index=3)
    values[0] = values[0] * 3.0  # ||w|| ~ 10 > U
    values[2] = values[2] * 0.05  # ||w|| ~ 0.1 < L
    names = ["dense/kernel", "dense/bias", "small/kernel", "zero/kernel"]
    optimizer = LAMB(
        0.02,
        epsilon=1e-6,
        bias_correction=bias_correction,
        weight_decay=0.1,
        weight_norm_lower=0.5,
        weight_norm_upper=4.0,
        trust_ratio_max=50.0,
    )
    ours, _ = run_optimizer(optimizer, values, names, grads)
    reference, _ = numpy_lamb(
        values,
        grads,
        0.02,
        bias_correction=bias_correction,
        wd=0.1,
        lower=0.5,
        upper=4.0,
        rmax=50.0,
        decay=[True, False, True, True],
        adapt=[True, False, True, True],
    )
    assert np.linalg.norm(values[0]) > 4.0 and np.linalg.norm(values[2]) < 0.5
    assert_history_close(ours, reference)


def test_lamb_clips_weight_norm_to_upper_and_lower_bound_exactly():
    lr, upper, lower = 0.1, 10.0, 2.0
    big = np.array([12.0, 16.0])  # ||w|| = 20 > U
    small = np.array([0.3, 0.4])  # ||w|| = 0.5 < L
    grad = np.array([1.0, -2.0])  # first bias-corrected Adam step with eps=0: sign(g) = [1, -1]
    optimizer = LAMB(lr, epsilon=0.0, weight_norm_lower=lower, weight_norm_upper=upper)
    history, _ = run_optimizer(optimizer, [big, small], ["big", "small"], [[grad, grad]])
    unit = np.array([1.0, -1.0]) / math.sqrt(2.0)
    np.testing.assert_allclose(history[0][0], big - lr * upper * unit, rtol=1e-6)
    np.testing.assert_allclose(history[0][1], small - lr * lower * unit, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(history[0][0] - big), lr * upper, rtol=1e-6)
    # Without the clip the step is lr * ||w|| = 2.0, not lr * U = 1.0.
    unclipped, _ = run_optimizer(
        LAMB(lr, epsilon=0.0, weight_norm_upper=None), [big], ["big"], [[grad]]
    )
    np.testing.assert_allclose(np.linalg.norm(unclipped[0][0] - big), lr * 20.0, rtol=1e-6)


def test_lamb_trust_ratio_clip_and_zero_weight_fallback():
    w = np.array([3.0, 4.0])  # ||w|| = 5, ||u|| = sqrt(2) with eps = 0 -> r = 5 / sqrt(2) = 3.54
    grad = np.array([0.5, 0.25])
    optimizer = LAMB(0.1, epsilon=0.0, trust_ratio_max=2.0, log_trust_ratios=True)
    history, _ = run_optimizer(optimizer, [w, np.zeros(2)], ["w", "zero"], [[grad, grad]])
    np.testing.assert_allclose(history[0][0], w - 0.1 * 2.0 * np.array([1.0, 1.0]), rtol=1e-6)
    # ||w|| = 0: r = 1, a plain (bias-corrected) Adam step of size lr * sign(g).
    # (rtol: Keras, like us, evaluates 1 - beta_2**t in float32: 1 - 0.999 = 0.00099999)
    np.testing.assert_allclose(history[0][1], -0.1 * np.array([1.0, 1.0]), rtol=1e-5)
    diagnostics = optimizer.trust_ratio_diagnostics()
    assert diagnostics["w"]["trust_ratio"] == pytest.approx(2.0)
    assert diagnostics["zero"]["trust_ratio"] == pytest.approx(1.0)
    assert diagnostics["w"]["update_norm"] == pytest.approx(np.linalg.norm(history[0][0] - w))


def test_lamb_paper_formula_by_hand_for_nonzero_weights():
    """nu(c) = max(L, min(c, U)) on three weight norms below, inside and above [L, U]:
    the step is lr * nu(||w||) along u / ||u||, whatever ||u|| is."""
    lr, lower, upper = 0.1, 1.0, 4.0
    grad = np.array([2.0, -1.0, 0.5])  # first bias-corrected step, eps = 0: u = sign(g)
    unit = np.array([1.0, -1.0, 1.0]) / math.sqrt(3.0)
    for norm, nu in ((0.5, 1.0), (2.0, 2.0), (9.0, 4.0)):
        w = norm * np.array([0.6, 0.8, 0.0])
        optimizer = LAMB(lr, epsilon=0.0, weight_norm_lower=lower, weight_norm_upper=upper)
        history, _ = run_optimizer(optimizer, [w], ["w"], [[grad]])
        assert nu == paper_nu(norm, lower, upper)
        np.testing.assert_allclose(history[0][0], w - lr * nu * unit, rtol=1e-6, err_msg=str(norm))


@pytest.mark.parametrize("lower", [0.0, 0.5])
def test_lamb_zero_weight_norm_deviates_from_the_paper_by_design(lower):
    """At ||w|| = 0 with L = 0 the paper's step lr * nu(0) * u / ||u|| is 0 (a
    zero-initialised variable would never move); the code takes the unscaled step lr * u
    there (trust ratio 1, as NVIDIA/DeepSpeed LAMB) -- the one documented deviation.
    With L > 0 the code follows the paper: a step of length lr * L, continuous with
    ||w|| = 2e-6, which gets lr * max(L, 2e-6) along u / ||u||."""
    lr = 0.1
    grad = np.array([0.5, -0.25, 1.0, 2.0])  # u = sign(g) (eps = 0), ||u|| = 2
    u = np.sign(grad)
    zero, tiny = np.zeros(4), np.full(4, 1e-6)  # ||tiny|| = 2e-6
    optimizer = LAMB(lr, epsilon=0.0, weight_norm_lower=lower, log_trust_ratios=True)
    history, _ = run_optimizer(optimizer, [zero, tiny], ["zero", "tiny"], [[grad, grad]])
    reference, _ = numpy_lamb([zero], [[grad]], lr, eps=0.0, lower=lower)
    np.testing.assert_allclose(history[0][0], reference[0][0], rtol=1e-5)
    paper, _ = numpy_lamb([zero], [[grad]], lr, eps=0.0, lower=lower, zero_weight_unscaled=False)
    np.testing.assert_allclose(paper[0][0], -lr * lower * u / 2.0, rtol=1e-12, atol=0)
    if lower == 0:  # the deviation: ratio 1, step lr * u (rtol: 1 - beta_2 in float32)
        np.testing.assert_allclose(history[0][0], -lr * u, rtol=1e-5)
        assert optimizer.trust_ratio_diagnostics()["zero"]["trust_ratio"] == 1.0
        assert np.abs(history[0][0] - paper[0][0]).max() > 0.01
    else:  # the paper's step
        np.testing.assert_allclose(history[0][0], paper[0][0], rtol=1e-5)
    # Just above 0 the code follows the paper: nu(2e-6) = max(L, 2e-6).
    np.testing.assert_allclose(
        history[0][1] - tiny, -lr * max(lower, 2e-6) * u / 2.0, rtol=1e-4, atol=1e-12
    )


def test_keras_weight_decay_is_not_applied_twice():
    # One LAMB step with wd: u = sign(g) + wd * w; Keras's extra `w -= lr * wd * w` would
    # shift the result by lr * wd * w = 0.05 * [3, 4].
    w, grad, lr, wd = np.array([3.0, 4.0]), np.array([1.0, 1.0]), 0.1, 0.5
    history, _ = run_optimizer(
        LAMB(lr, epsilon=0.0, weight_decay=wd, weight_norm_upper=None, no_decay_patterns=()),
        [w],
        ["w"],
        [[grad]],
    )
    u = np.ones(2) + wd * w
    np.testing.assert_allclose(history[0][0], w - lr * (5.0 / np.linalg.norm(u)) * u, rtol=1e-6)


# -- LARS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_lars_matches_numpy_reference(nesterov, weight_decay):
    shapes = [(4, 3), (3,), (2, 5)]
    values, grads = random_problem(shapes, steps=5, zero_index=2)
    names = ["conv/kernel", "conv/bias", "zero/kernel"]
    optimizer = LARS(0.5, momentum=0.9, weight_decay=weight_decay, eta=0.02, nesterov=nesterov)
    ours, _ = run_optimizer(optimizer, values, names, grads)
    reference = numpy_lars(
        values,
        grads,
        0.5,
        momentum=0.9,
        wd=weight_decay,
        eta=0.02,
        nesterov=nesterov,
        decay=[True, False, True],
        adapt=[True, False, True],
    )
    assert_history_close(ours, reference)
    # The other Nesterov setting gives a different trajectory: the flag is not a no-op.
    other = numpy_lars(
        values,
        grads,
        0.5,
        momentum=0.9,
        wd=weight_decay,
        eta=0.02,
        nesterov=not nesterov,
        decay=[True, False, True],
        adapt=[True, False, True],
    )
    assert not np.allclose(ours[-1][0], other[-1][0], rtol=1e-4)


def test_lars_single_step_by_hand():
    # ||w|| = 5, ||g|| = 1, wd = 0.2: r = 0.01 * 5 / (1 + 1) = 0.025; local lr = 4 * r = 0.1;
    # update = g + 0.2 w; v = 0.1 * update; w1 = w - v.
    w, g = np.array([3.0, 4.0]), np.array([0.6, -0.8])
    history, _ = run_optimizer(
        LARS(4.0, momentum=0.9, weight_decay=0.2, eta=0.01, epsilon=0.0, no_decay_patterns=()),
        [w],
        ["w"],
        [[g]],
    )
    np.testing.assert_allclose(history[0][0], w - 0.1 * (g + 0.2 * w), rtol=1e-6)


# -- exclusions by path -----------------------------------------------------------------


def tiny_bert():
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=100,
        num_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    )


def flags_by_path(optimizer, variables):
    flags = {}
    for group in optimizer.parameter_groups(variables):
        for path in group.paths:
            flags[path] = (group.weight_decay > 0, group.layer_adaptation)
    return flags


@pytest.mark.parametrize(
    "make", [lambda: LAMB(1e-3, weight_decay=0.01), lambda: LARS(1.0, weight_decay=1e-4)]
)
def test_bert_layernorm_and_bias_get_no_decay_and_no_adaptation(make):
    backbone = tiny_bert()
    optimizer = make()
    optimizer.build(backbone.trainable_variables)
    flags = flags_by_path(optimizer, backbone.trainable_variables)
    excluded = {p for p in flags if p.endswith("/bias") or "layer_norm/" in p}
    # 2 embedding + 2 layers x 2 LayerNorms gamma/beta; 4 attention + 2 FFN biases x 2 + pooler.
    assert len([p for p in excluded if "layer_norm/" in p]) == 2 + 2 * 2 * 2
    assert len([p for p in excluded if p.endswith("/bias")]) == 2 * 6 + 1
    for path, (decay, adapt) in flags.items():
        expected = path not in excluded
        assert (decay, adapt) == (expected, expected), path
    assert flags["transformer_layer_0/feedforward_intermediate_dense/kernel"] == (True, True)
    assert flags["transformer_layer_1/self_attention_layer/query/kernel"] == (True, True)
    assert flags["token_embedding/embeddings"] == (True, True)


def test_bert_update_skips_decay_and_adaptation_for_layernorm_but_not_kernels():
    backbone = tiny_bert()
    variables = backbone.trainable_variables
    by_path = {v.path: v for v in variables}
    ln, kernel = "embeddings_layer_norm/gamma", "pooled_dense/kernel"
    before = {p: by_path[p].numpy().astype(np.float64) for p in (ln, kernel)}
    lr, wd, eps = 0.01, 0.3, 1e-6
    optimizer = LAMB(lr, weight_decay=wd, epsilon=eps)
    optimizer.apply([tf.fill(v.shape, 0.5) for v in variables], variables)
    # Step 1, bias-corrected: Adam direction = 0.5 / (0.5 + eps) everywhere.
    adam = 0.5 / (0.5 + eps)
    np.testing.assert_allclose(by_path[ln].numpy(), before[ln] - lr * adam, rtol=1e-6)
    u = adam + wd * before[kernel]
    r = min(np.linalg.norm(before[kernel]), 10.0) / np.linalg.norm(u)
    np.testing.assert_allclose(by_path[kernel].numpy(), before[kernel] - lr * r * u, rtol=1e-5)


def test_batchnorm_layernorm_and_dense_paths():
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3),
            keras.layers.BatchNormalization(),
            keras.layers.LayerNormalization(),
            keras.layers.Dense(2, name="head"),
        ]
    )
    optimizer = LARS(1.0, weight_decay=1e-4)
    flags = flags_by_path(optimizer, model.trainable_variables)
    batch_norm = model.layers[1]
    assert batch_norm.gamma.path.endswith("/batch_normalization/gamma")  # a real Keras 3 path
    assert flags[batch_norm.gamma.path] == (False, False)
    for path, (decay, adapt) in flags.items():
        expected = path.endswith("kernel")
        assert (decay, adapt) == (expected, expected), path
    assert sum(decay for decay, _ in flags.values()) == 2  # dense/kernel and head/kernel


def test_custom_patterns_and_keras_name_exclusion_combine():
    backbone = tiny_bert()
    optimizer = LAMB(
        1e-3, weight_decay=0.01, no_decay_patterns=[r"embeddings$"], no_adapt_patterns=[]
    )
    optimizer.exclude_from_weight_decay(var_names=["pooled_dense"])  # Keras's own, by name
    flags = flags_by_path(optimizer, backbone.trainable_variables)
    assert flags["token_embedding/embeddings"] == (False, True)
    assert flags["embeddings_layer_norm/gamma"] == (True, True)  # no longer excluded
    assert all(adapt for _, adapt in flags.values())


def test_describe_parameter_groups_lists_every_variable_once():
    backbone = tiny_bert()
    optimizer = LAMB(1e-3, weight_decay=0.01)
    optimizer.build(backbone.trainable_variables)
    text = describe_parameter_groups(optimizer)
    print(text)
    assert "weight_decay=0.01 layer_adaptation=True" in text
    assert "weight_decay=0 layer_adaptation=False" in text
    for v in backbone.trainable_variables:
        assert text.count(f" {v.path} ") == 1, v.path
    adamw = PathDecayAdamW(1e-3, weight_decay=0.01)
    adamw.build(backbone.trainable_variables)
    assert adamw._use_weight_decay(backbone.trainable_variables[0])  # embeddings decay
    ln = [v for v in backbone.trainable_variables if v.path == "embeddings_layer_norm/gamma"][0]
    assert not adamw._use_weight_decay(ln)
    assert "layer_adaptation=False" in describe_parameter_groups(adamw)


def test_path_decay_adamw_does_not_decay_layernorm():
    model = keras.Sequential(
        [keras.Input((2,)), keras.layers.LayerNormalization(), keras.layers.Dense(1)]
    )
    optimizer = PathDecayAdamW(0.1, weight_decay=0.5)
    variables = model.trainable_variables
    before = [v.numpy() for v in variables]
    optimizer.apply([tf.zeros_like(v) for v in variables], variables)  # zero grads: decay only
    for v, b in zip(variables, before):
        expected = b * (1 - 0.1 * 0.5) if v.path.endswith("kernel") else b
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6, err_msg=v.path)


# -- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda: LAMB(-1e-3), "learning_rate"),
        (lambda: LAMB(1e-3, weight_decay=-0.1), "weight_decay"),
        (lambda: LAMB(1e-3, weight_norm_lower=5.0, weight_norm_upper=1.0), "weight_norm_lower"),
        (lambda: LAMB(1e-3, beta_1=1.0), "beta_1"),
        (lambda: LAMB(1e-3, trust_ratio_min=2.0, trust_ratio_max=1.0), "trust_ratio_min"),
        (lambda: LAMB(1e-3, no_decay_patterns=["layer_norm/(gamma"]), "layer_norm/(gamma"),
        (lambda: LARS(-1.0), "learning_rate"),
        (lambda: LARS(1.0, momentum=-0.5), "momentum"),
        (lambda: LARS(1.0, weight_decay=-1e-4), "weight_decay"),
        (lambda: LARS(1.0, no_adapt_patterns=["*bias"]), "*bias"),
        (lambda: PathDecaySGD(0.1, no_decay_patterns=["[bias"]), "[bias"),
    ],
)
def test_bad_constructor_arguments_raise(make, words):
    with pytest.raises(ValueError) as info:
        make()
    assert words in str(info.value)


# -- serialisation and checkpoints ------------------------------------------------------


def test_get_config_round_trip():
    schedule = WarmupLinearDecay(1e-3, total_steps=100, warmup_steps=10)
    optimizers = [
        LAMB(
            schedule,
            beta_1=0.8,
            beta_2=0.99,
            epsilon=1e-5,
            bias_correction=False,
            weight_decay=0.02,
            weight_norm_lower=0.1,
            weight_norm_upper=5.0,
            trust_ratio_min=0.01,
            trust_ratio_max=10.0,
            no_decay_patterns=["x$"],
            no_adapt_patterns=["y$"],
            log_trust_ratios=True,
            clipnorm=1.0,
        ),
        LARS(
            WarmupPolynomialDecay(2.0, 50, 5, power=3.0),
            momentum=0.8,
            weight_decay=1e-4,
            eta=0.01,
            epsilon=1e-7,
            nesterov=True,
            trust_ratio_max=5.0,
            no_adapt_patterns=[],
            name="my_lars",
        ),
        PathDecayAdamW(1e-3, weight_decay=0.03, no_decay_patterns=["gamma$"]),
    ]
    for optimizer in optimizers:
        config = optimizer.get_config()
        clone = type(optimizer).from_config(copy.deepcopy(config))  # it edits its argument
        assert clone.get_config() == config
        revived = keras.optimizers.deserialize(
            json.loads(json.dumps(keras.optimizers.serialize(optimizer)))
        )
        assert type(revived) is type(optimizer)
        assert revived.get_config() == config
    config = optimizers[0].get_config()
    assert config["no_adapt_patterns"] == ["y$"] and config["weight_norm_upper"] == 5.0
    assert config["learning_rate"]["config"]["warmup_steps"] == 10


def small_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(1)]
    )


def test_model_save_and_load_restores_lamb_slots(tmp_path):
    x = RNG.normal(size=(32, 5)).astype("float32")
    y = RNG.normal(size=(32, 1)).astype("float32")
    model = small_model()
    model.compile(
        optimizer=LAMB(WarmupLinearDecay(1e-2, 20, 2), weight_decay=0.01, log_trust_ratios=True),
        loss="mse",
    )
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, LAMB)
    assert int(loaded.optimizer.iterations.numpy()) == 4
    originals, restored = model.optimizer.variables, loaded.optimizer.variables
    # iteration (the LR is a schedule, not a variable), then m, v, r, norm per variable
    assert len(originals) == len(restored) == 1 + 4 * 4
    names = " ".join(v.name for v in originals)
    assert "momentum" in names and "velocity" in names and "trust_ratio" in names
    for a, b in zip(originals, restored):
        np.testing.assert_array_equal(b.numpy(), a.numpy(), err_msg=a.name)
    assert any(np.any(v.numpy() != 0) for v in originals if "velocity" in v.name)
    # Training on continues identically (slots, step count and schedule all restored).
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


def test_tf_train_checkpoint_restores_lars_velocity(tmp_path):
    variables = make_variables([RNG.normal(size=(3, 2)), RNG.normal(size=(2,))], ["k", "b"])
    optimizer = LARS(0.5, weight_decay=1e-3)
    for _ in range(2):
        optimizer.apply(
            [tf.constant(RNG.normal(size=v.shape), tf.float32) for v in variables], variables
        )
    prefix = tf.train.Checkpoint(optimizer=optimizer, variables=variables).save(
        str(tmp_path / "ckpt")
    )
    fresh_variables = make_variables([np.zeros((3, 2)), np.zeros((2,))], ["k", "b"])
    fresh = LARS(0.5, weight_decay=1e-3)
    fresh.build(fresh_variables)
    tf.train.Checkpoint(optimizer=fresh, variables=fresh_variables).restore(
        prefix
    ).assert_existing_objects_matched()
    assert int(fresh.iterations.numpy()) == 2
    for a, b in zip(optimizer._velocities, fresh._velocities):
        assert np.any(a.numpy() != 0)
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# -- training: model.fit, custom train_step with accumulation, tf.distribute ------------


def imbalanced_regression():
    """A ReLU MLP whose layers are rescaled by c, c, 1/c: the same function, but the
    gradient of the first layer shrinks and that of the last grows by c, so one global
    SGD step size fits no layer; layer-wise ratios are invariant to the rescaling."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4096, 16)).astype("float32")
    w = rng.normal(size=(16, 1)).astype("float32") / 4.0
    y = (np.tanh(x @ w) + 0.5 * np.sin(2 * x[:, :1])).astype("float32")
    return x, y


def fit_final_loss(optimizer, scale=10.0, epochs=20, batch_size=2048):
    x, y = imbalanced_regression()
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((16,)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    first, second, last = model.layers
    first.kernel.assign(first.kernel * scale)
    second.bias.assign(second.bias * scale)
    last.kernel.assign(last.kernel / scale)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=False)
    loss = float(model.evaluate(x, y, batch_size=4096, verbose=0))
    return loss if math.isfinite(loss) else float("inf")


@pytest.fixture(scope="module")
def best_sgd_loss():
    losses = {
        lr: fit_final_loss(keras.optimizers.SGD(lr, momentum=0.9)) for lr in (0.01, 0.003, 0.001)
    }
    print("SGD(momentum 0.9) final loss by lr:", losses)
    return min(losses.values())


@pytest.mark.parametrize(
    "name, optimizer", [("LAMB", lambda: LAMB(0.03)), ("LARS", lambda: LARS(1.0))]
)
def test_layerwise_optimizers_beat_best_tuned_sgd_at_large_batch(name, optimizer, best_sgd_loss):
    x, y = imbalanced_regression()
    baseline = float(np.mean((y - y.mean()) ** 2))
    loss = fit_final_loss(optimizer())
    print(f"{name}: final loss {loss:.4f}; best SGD {best_sgd_loss:.4f}; mean {baseline:.4f}")
    assert loss < 0.5 * baseline
    assert loss <= best_sgd_loss * 1.02


class AccumulatingModel(keras.Model):
    """A custom train_step like the project's: micro-batch gradients are accumulated,
    "all-reduced" (here: averaged over the micro-batches) and applied once."""

    def __init__(self, inner, micro_batches, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.micro_batches = micro_batches

    def call(self, x):
        return self.inner(x)

    def train_step(self, data):
        x, y = data
        variables = self.trainable_variables
        total = [tf.zeros_like(v) for v in variables]
        for xs, ys in zip(tf.split(x, self.micro_batches), tf.split(y, self.micro_batches)):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(self(xs) - ys))
            total = [t + g for t, g in zip(total, tape.gradient(loss, variables))]
        self.optimizer.apply([t / self.micro_batches for t in total], variables)
        return {"loss": loss}


@pytest.mark.parametrize(
    "make",
    [lambda: LAMB(1e-2, weight_decay=0.01), lambda: LARS(0.5, weight_decay=1e-3, nesterov=True)],
)
def test_custom_train_step_with_accumulation_equals_full_batch_fit(make):
    x = RNG.normal(size=(64, 5)).astype("float32")
    y = RNG.normal(size=(64, 1)).astype("float32")
    reference = small_model(3)
    reference.compile(optimizer=make(), loss="mse")
    reference.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    accumulating = AccumulatingModel(small_model(3), micro_batches=4)
    accumulating.compile(optimizer=make())
    accumulating.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
    assert int(accumulating.optimizer.iterations.numpy()) == 8
    start = small_model(3).trainable_variables
    for a, b, s in zip(reference.trainable_variables, accumulating.trainable_variables, start):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
        assert not np.allclose(a.numpy(), s.numpy())


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from adv_large_batch.optimizers import LAMB, LARS

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype("float32")
    y = rng.normal(size=(64, 1)).astype("float32")

    def train(strategy, make):
        with strategy.scope():
            keras.utils.set_random_seed(3)
            model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                                      keras.layers.Dense(1)])
            start = [v.numpy() for v in model.trainable_variables]
            model.compile(optimizer=make(), loss="mse")
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        return start, [v.numpy() for v in model.trainable_variables], model.optimizer

    out = {}
    makers = {
        "lamb": lambda: LAMB(1e-2, weight_decay=0.01, log_trust_ratios=True),
        "lars": lambda: LARS(0.5, weight_decay=1e-3, nesterov=True, log_trust_ratios=True),
    }
    for name, make in makers.items():
        mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        start, multi, opt = train(mirrored, make)
        _, single, opt1 = train(tf.distribute.get_strategy(), make)
        d, d1 = opt.trust_ratio_diagnostics(), opt1.trust_ratio_diagnostics()
        out[name] = {
            "replicas": mirrored.num_replicas_in_sync,
            "iterations": int(opt.iterations.numpy()),
            "max_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(multi, single)),
            "moved": min(float(np.max(np.abs(a - b))) for a, b in zip(multi, start)),
            "ratio_diff": max(
                abs(a["trust_ratio"] - b["trust_ratio"]) for a, b in zip(d.values(), d1.values())
            ),
            "ratios_logged": sum(d[k]["trust_ratio"] != 1.0 for k in d),
        }
    print("RESULT " + json.dumps(out))
    """
)


def test_mirrored_strategy_two_replicas_matches_single_device():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    print(result)
    for name, r in result.items():
        assert r["replicas"] == 2 and r["iterations"] == 4, name
        assert r["moved"] > 1e-4, name
        assert r["max_diff"] < 1e-5, name
        assert r["ratio_diff"] < 1e-5 and r["ratios_logged"] >= 2, name


# -- diagnostics --------------------------------------------------------------------------


def read_scalars(logdir):
    values = {}
    for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    values[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
    return values


def test_trust_ratio_logger_writes_every_variable(tmp_path):
    x = RNG.normal(size=(32, 5)).astype("float32")
    y = RNG.normal(size=(32, 1)).astype("float32")
    model = small_model()
    model.compile(optimizer=LARS(0.5, weight_decay=1e-4, log_trust_ratios=True), loss="mse")
    logdir = str(tmp_path / "trust")
    model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[TrustRatioLogger(logdir)])
    scalars = read_scalars(logdir)
    diagnostics = model.optimizer.trust_ratio_diagnostics()
    assert len(diagnostics) == 4
    for path, values in diagnostics.items():
        assert scalars[(f"trust_ratio/{path}", 1)] == pytest.approx(values["trust_ratio"])
        assert scalars[(f"update_norm/{path}", 1)] == pytest.approx(values["update_norm"])
        assert (f"trust_ratio/{path}", 0) in scalars
    kernel = diagnostics[model.layers[0].kernel.path]
    assert kernel["trust_ratio"] != 1.0 and kernel["update_norm"] > 0
    assert diagnostics[model.layers[0].bias.path]["trust_ratio"] == 1.0


def test_trust_ratio_logger_requires_logging_optimizer(tmp_path):
    model = small_model()
    model.compile(optimizer=LAMB(1e-3), loss="mse")
    with pytest.raises(ValueError, match="log_trust_ratios=True"):
        model.fit(
            np.ones((4, 5)), np.ones((4, 1)), verbose=0, callbacks=[TrustRatioLogger(str(tmp_path))]
        )


# -- OptimizerConfig and build_optimizer ----------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"lr": -1e-4}, ["--lr", "-0.0001"]),
        ({"weight_decay": -0.01}, ["--weight-decay", "-0.01", ">= 0"]),
        ({"momentum": -0.9}, ["--momentum", "-0.9", "[0, 1)"]),
        ({"momentum": 1.0}, ["--momentum", "[0, 1)"]),
        ({"trust_clip_lower": 5.0, "trust_clip_upper": 1.0}, ["--trust-clip-lower", "5.0", "1.0"]),
        ({"trust_ratio_min": 3.0, "trust_ratio_max": 1.0}, ["--trust-ratio-min", "3.0"]),
        (
            {"no_decay_pattern": ("bias$", "layer_norm/(gamma")},
            ["--no-decay-pattern", "layer_norm/(gamma"],
        ),
        ({"no_adapt_pattern": ("*",)}, ["--no-adapt-pattern", "'*'"]),
        ({"warmup_ratio": 1.0}, ["--warmup-ratio", "1.0", "[0, 1)"]),
        ({"warmup_ratio": -0.1}, ["--warmup-ratio", "-0.1"]),
        ({"optimizer": "adagrad"}, ["--optimizer", "adagrad"]),
        ({"lr_scaling": "cubic"}, ["--lr-scaling", "cubic"]),
        ({"optimizer": "adam"}, ["--weight-decay", "adamw"]),
        ({"beta2": 1.5}, ["--beta2", "1.5"]),
        ({"lars_eta": 0.0}, ["--lars-eta"]),
    ],
)
def test_optimizer_config_rejects_bad_values(kwargs, words):
    with pytest.raises(ConfigError) as info:
        OptimizerConfig(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_every_optimizer_flag_value_has_a_builder():
    from adv_large_batch.optimizers.config import OPTIMIZERS
    from adv_large_batch.optimizers.factory import OPTIMIZERS_BY_NAME

    assert tuple(OPTIMIZERS_BY_NAME) == OPTIMIZERS


@pytest.mark.parametrize(
    "text, said, inside, outside",
    [
        ("(0, inf)", "> 0", [1e-9, 5, 10**9], [0, -1, math.inf, math.nan, "1", None]),
        ("[1, inf)", ">= 1", [1, 2, np.int64(3)], [0, 0.5, math.inf]),
        ("[0, 1)", "in [0, 1)", [0, 0.5], [1, 1.0, -0.1, math.nan]),
        ("(0, inf] inf = no clip", "> 0 (inf = no clip)", [1, math.inf], [0, math.nan]),
        ("[0, 255] pixels", "in [0, 255] (pixels)", [0, 255, 3.5], [-1, 255.5]),
    ],
)
def test_declared_bounds_read_as_written(text, said, inside, outside):
    from adv_large_batch.flags import Bounds

    bounds = Bounds.parse(text)
    assert bounds.describe() == said
    assert all(value in bounds for value in inside)
    assert not any(value in bounds for value in outside)


def test_build_optimizer_rejects_warmup_longer_than_training():
    with pytest.raises(ConfigError, match=r"--warmup-steps 500 .*100"):
        build_optimizer(OptimizerConfig(warmup_steps=500), total_steps=100, global_batch_size=32)
    with pytest.raises(ConfigError, match="total_steps"):
        build_optimizer(OptimizerConfig(), total_steps=0, global_batch_size=32)
    # A constant schedule has no warm-up, so the same flags are fine there.
    build_optimizer(OptimizerConfig(warmup_steps=500, schedule="constant"), 100, 32)


def test_build_optimizer_default_is_scala_lamb_with_sqrt_scaling():
    config = OptimizerConfig()
    optimizer = build_optimizer(config, total_steps=1000, global_batch_size=1024)
    assert isinstance(optimizer, LAMB)
    schedule = optimizer._learning_rate
    assert isinstance(schedule, WarmupLinearDecay)
    assert schedule.learning_rate == pytest.approx(config.lr * math.sqrt(1024 / 32))
    assert schedule.warmup_steps == 100 and schedule.total_steps == 1000
    assert (optimizer.weight_norm_lower, optimizer.weight_norm_upper) == (0.0, 10.0)
    assert (
        optimizer.weight_decay == config.weight_decay and optimizer.epsilon == config.adam_epsilon
    )


def test_build_optimizer_for_the_image_trainer_lars():
    config = OptimizerConfig(
        optimizer="lars",
        lr=0.1,
        base_batch_size=256,
        lr_scaling="linear",
        weight_decay=5e-5,
        momentum=0.9,
        nesterov=True,
        lars_eta=0.001,
        schedule="warmup_poly",
        warmup_ratio=0.05,
        poly_power=2.0,
        log_trust_ratios=True,
        trust_clip_upper=float("inf"),
    )
    optimizer = build_optimizer(config, total_steps=200, global_batch_size=4096)
    assert isinstance(optimizer, LARS)
    assert optimizer.nesterov and optimizer.log_trust_ratios and optimizer.weight_decay == 5e-5
    schedule = optimizer._learning_rate
    assert isinstance(schedule, WarmupPolynomialDecay)
    assert schedule.learning_rate == pytest.approx(0.1 * 4096 / 256)
    assert schedule.warmup_steps == 10 and schedule.power == 2.0


@pytest.mark.parametrize(
    "name, cls", [("adam", keras.optimizers.Adam), ("adamw", PathDecayAdamW), ("sgd", PathDecaySGD)]
)
def test_build_optimizer_other_choices(name, cls):
    config = OptimizerConfig(
        optimizer=name, weight_decay=0.0 if name == "adam" else 0.01, schedule="constant"
    )
    optimizer = build_optimizer(config, total_steps=10, global_batch_size=32)
    assert type(optimizer) is cls
    assert float(optimizer.learning_rate.numpy()) == pytest.approx(config.lr)


def test_optimizer_config_cli_round_trip():
    parser = argparse.ArgumentParser()
    add_arguments(parser, OptimizerConfig)
    assert from_args(OptimizerConfig, parser.parse_args([])) == OptimizerConfig()
    args = parser.parse_args(
        [
            "--optimizer",
            "lars",
            "--no-decay-pattern",
            "--no-adapt-pattern",
            "bias$",
            "gamma$",
            "--trust-ratio-max",
            "5",
            "--nesterov",
            "true",
            "--warmup-steps",
            "7",
        ]
    )
    config = from_args(OptimizerConfig, args)
    assert config.no_decay_pattern == () and config.no_adapt_pattern == ("bias$", "gamma$")
    assert config.trust_ratio_max == 5.0 and config.nesterov is True and config.warmup_steps == 7
    assert dataclasses.replace(config, lr=1e-3).lr == 1e-3
    hash(config)
