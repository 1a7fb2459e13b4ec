"""PGD: pixel units, random start, projection, and the ascent on a model with known gradients."""

import numpy as np
import pytest
import tensorflow as tf

from adv_large_batch.conadv import pgd

RNG = np.random.default_rng(0)
W = RNG.normal(size=(12, 4)).astype("float32")  # a linear softmax classifier on 12 "pixels"
B = RNG.normal(size=4).astype("float32")


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def numpy_losses(x, y):
    p = softmax(x @ W + B)
    return -np.log(p[np.arange(len(y)), y])


def numpy_input_gradient(x, y):
    """d(sum of CE)/dx for logits x W + b: (softmax - onehot) W^T (the mean only rescales it)."""
    p = softmax(x @ W + B)
    p[np.arange(len(y)), y] -= 1.0
    return p @ W.T


def loss_fn_for(y):
    def loss_fn(x):
        logits = tf.matmul(x, W) + B
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))

    return loss_fn


def batch(n=64):
    # Pixels in [0, 1], a quarter of them pinned at the ends of the range.
    x = RNG.random((n, 12)).astype("float32")
    x[:, :3] = 0.0
    x[:, 3:6] = 1.0
    return x, RNG.integers(0, 4, n).astype("int32")


def test_pixel_units_are_out_of_255():
    assert pgd.pixels_to_unit(255) == 1.0
    assert pgd.pixels_to_unit(8) == pytest.approx(8 / 255)


def test_random_start_is_uniform_in_the_ball_clipped_and_seeded():
    x = np.full((200, 50), 0.5, "float32")
    eps = pgd.pixels_to_unit(16)
    start = pgd.random_start(tf.constant(x), eps, tf.constant([1, 2])).numpy()
    noise = start - x
    assert np.abs(noise).max() <= eps + 1e-7
    assert noise.mean() == pytest.approx(0.0, abs=eps * 0.02)
    assert noise.var() == pytest.approx(eps**2 / 3, rel=0.05)  # Var U(-e, e) = e^2 / 3
    again = pgd.random_start(tf.constant(x), eps, tf.constant([1, 2])).numpy()
    other = pgd.random_start(tf.constant(x), eps, tf.constant([1, 3])).numpy()
    np.testing.assert_array_equal(start, again)
    assert np.abs(start - other).max() > 0
    edge = pgd.random_start(tf.zeros((10, 10)), eps, tf.constant([0, 0])).numpy()
    assert edge.min() >= 0.0


@pytest.mark.parametrize("steps, step_px", [(1, 8), (3, 20)])
def test_pgd_stays_in_the_ball_and_the_pixel_range(steps, step_px):
    x, y = batch()
    eps = pgd.pixels_to_unit(8)
    x_adv = pgd.pgd_attack(
        loss_fn_for(y), tf.constant(x), eps, pgd.pixels_to_unit(step_px), tf.constant([0, 7]), steps
    ).numpy()
    assert np.abs(x_adv - x).max() <= eps + 1e-6
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert pgd.linf_distance(tf.constant(x_adv), tf.constant(x)).numpy() == pytest.approx(
        np.abs(x_adv - x).max()
    )


def test_one_step_without_random_start_is_the_signed_gradient_step():
    x, y = batch()
    eps = step = pgd.pixels_to_unit(6)
    x_adv = pgd.pgd_attack(
        loss_fn_for(y), tf.constant(x), eps, step, tf.constant([0, 0]), random_init=False
    ).numpy()
    expected = np.clip(x + step * np.sign(numpy_input_gradient(x, y)), 0.0, 1.0)
    np.testing.assert_allclose(x_adv, expected, atol=1e-6)
    # The loss is convex in x, so a step along sign(grad) raises every example's loss
    # (by at least the first-order term); clipping only removes coordinates.
    before, after = numpy_losses(x, y), numpy_losses(x_adv, y)
    assert np.all(after > before)


def test_random_start_pgd_beats_random_noise_of_the_same_radius():
    x, y = batch(256)
    eps = pgd.pixels_to_unit(12)
    x_adv = pgd.pgd_attack(loss_fn_for(y), tf.constant(x), eps, eps, tf.constant([3, 4])).numpy()
    noise = pgd.random_start(tf.constant(x), eps, tf.constant([5, 6])).numpy()
    clean, adversarial, noisy = (numpy_losses(v, y).mean() for v in (x, x_adv, noise))
    assert adversarial > clean + 0.1 and adversarial > noisy + 0.1


def test_project_and_ascent_step():
    x = tf.constant([[0.5, 0.01, 0.99]])
    far = tf.constant([[0.9, -0.5, 1.5]])
    np.testing.assert_allclose(pgd.project(far, x, 0.1).numpy(), [[0.6, 0.0, 1.0]], atol=1e-7)
    stepped = pgd.ascent_step(x, tf.constant([[-3.0, 0.0, 2.0]]), 0.05).numpy()
    np.testing.assert_allclose(stepped, [[0.45, 0.01, 1.04]], atol=1e-7)
