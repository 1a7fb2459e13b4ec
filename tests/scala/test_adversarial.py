"""ScaLA's pure functions against hand/NumPy-computed values."""

import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.scala import perturbation as adv


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_symmetric_kl_matches_numpy_and_is_symmetric():
    rng = np.random.RandomState(0)
    p, q = rng.randn(5, 3).astype("float32"), rng.randn(5, 3).astype("float32")
    lp, lq = np_log_softmax(p), np_log_softmax(q)
    kl_pq = (np.exp(lp) * (lp - lq)).sum(-1)
    kl_qp = (np.exp(lq) * (lq - lp)).sum(-1)
    expected = np.mean(kl_pq + kl_qp)
    got = adv.symmetric_kl_from_logits(p, q).numpy()
    assert got == pytest.approx(expected, rel=1e-5)
    assert adv.symmetric_kl_from_logits(q, p).numpy() == pytest.approx(got, rel=1e-6)
    assert adv.symmetric_kl_from_logits(p, p).numpy() == pytest.approx(0.0, abs=1e-7)
    # Shifting logits by a constant does not change the distribution.
    assert adv.symmetric_kl_from_logits(p, p + 3.0).numpy() == pytest.approx(0.0, abs=1e-6)


def test_symmetric_kl_is_stable_for_extreme_logits():
    p = tf.constant([[1000.0, -1000.0]])
    q = tf.constant([[-1000.0, 1000.0]])
    value = adv.symmetric_kl_from_logits(p, q).numpy()
    assert np.isfinite(value) and value == pytest.approx(4000.0, rel=1e-4)


def test_label_kl_is_cross_entropy_and_squared_error():
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]], "float32")
    labels = np.array([0, 2])
    expected = -np.mean(np_log_softmax(logits)[np.arange(2), labels])
    assert adv.label_kl_from_logits(labels, logits).numpy() == pytest.approx(expected, rel=1e-6)
    assert adv.squared_error([1.0, 2.0], [[1.5], [1.0]]).numpy() == pytest.approx((0.25 + 1.0) / 2)
    r = adv.adversarial_regulariser(tf.constant(logits), tf.constant(logits), "probs", False)
    assert r.numpy() == pytest.approx(0.0, abs=1e-7)


def test_projection_and_random_start_stay_in_ball():
    y = tf.constant([[-3e-5, -1e-5, 0.0, 5e-6, 2e-5]])
    np.testing.assert_allclose(
        adv.project_linf(y, 1e-5).numpy(), [[-1e-5, -1e-5, 0.0, 5e-6, 1e-5]], rtol=1e-6
    )
    y0 = adv.random_start((4, 6, 8), 1e-5, "uniform", seed=tf.constant([1, 2])).numpy()
    assert np.abs(y0).max() <= 1e-5 and np.abs(y0).max() > 5e-6
    normal = adv.random_start((2000,), 1e-5, "normal", scale=2e-5, seed=tf.constant([3, 4]))
    assert np.std(normal.numpy()) == pytest.approx(2e-5, rel=0.1)
    assert not adv.random_start((3,), 1.0, "zero").numpy().any()
    with pytest.raises(ValueError, match="random start kind"):
        adv.random_start((3,), 1.0, "laplace")


def test_normalised_steps():
    g = np.array([[[3.0, -4.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]], "float32")
    linf = adv.normalize_gradient(g, "linf").numpy()
    np.testing.assert_allclose(linf[0], g[0] / 4.0, rtol=1e-6)
    l2 = adv.normalize_gradient(g, "l2").numpy()
    np.testing.assert_allclose(l2[0], g[0] / np.sqrt(26.0), rtol=1e-6)
    assert not linf[1].any() and not l2[1].any()  # zero gradient stays zero
    np.testing.assert_array_equal(adv.normalize_gradient(g, "none").numpy(), g)
    # One normalised step of size rho >> eps lands on the boundary for the largest entry.
    y1 = adv.ascent_step(tf.zeros_like(g), g, 1e-4, 1e-5, "linf").numpy()
    assert y1[0, 0, 1] == pytest.approx(-1e-5) and y1[0, 0, 0] == pytest.approx(1e-5)
    with pytest.raises(ValueError, match="step norm"):
        adv.normalize_gradient(g, "l1")


def test_padding_is_never_perturbed():
    mask = tf.constant([[1, 1, 0, 0], [1, 1, 1, 0]])
    y0 = adv.random_start((2, 4, 3), 1e-5, seed=tf.constant([0, 1]))

    def r_of(y):
        return tf.reduce_sum(tf.sin(1e4 * y) + y)  # gradient non-zero everywhere

    y, _ = adv.projected_gradient_ascent(
        r_of, y0, 1e-4, 1e-5, steps=2, norm="none", padding_mask=mask
    )
    y = y.numpy()
    assert not y[0, 2:].any() and not y[1, 3:].any()
    assert np.abs(y[0, :2]).min() > 0


def test_ascent_direction_increases_r_finite_difference():
    rng = np.random.RandomState(1)
    w = tf.constant(rng.randn(6, 3).astype("float32"))
    e = tf.constant(rng.randn(4, 5, 6).astype("float32"))
    target = tf.reduce_mean(e, 1) @ w

    def r_of(y):
        return adv.symmetric_kl_from_logits(target, tf.reduce_mean(e + y, 1) @ w)

    y0 = adv.random_start(e.shape, 0.05, seed=tf.constant([5, 6]))
    with tf.GradientTape() as tape:
        tape.watch(y0)
        r0 = r_of(y0)
    g = tape.gradient(r0, y0)
    h = 1e-3
    direction = adv.normalize_gradient(g, "l2")
    # Finite difference along the direction is positive and matches <g, d>.
    fd = (r_of(y0 + h * direction) - r_of(y0 - h * direction)) / (2 * h)
    assert fd.numpy() > 0
    assert fd.numpy() == pytest.approx(tf.reduce_sum(g * direction).numpy(), rel=1e-2)
    # And one PGA step (raw and normalised) increases r.
    for norm, step in (("none", 50.0), ("linf", 0.05)):
        y1, r_start = adv.projected_gradient_ascent(r_of, y0, step, 0.05, 1, norm)
        assert r_of(y1).numpy() > r_start.numpy()
        assert np.abs(y1.numpy()).max() <= 0.05 + 1e-7


def test_perturbation_norms():
    y = np.zeros((2, 3, 2), "float32")
    y[0, 0, 0] = 3.0
    y[0, 1, 1] = -4.0
    y[1, 2, 0] = 1.0
    linf, l2 = adv.perturbation_norms(tf.constant(y))
    assert linf.numpy() == pytest.approx(4.0)
    assert l2.numpy() == pytest.approx((5.0 + 1.0) / 2)
