"""The hand-checked linear-model tests of ConAdv's pairing, on the JAX backend: the
separate schedule with tau = 1 and tau = 2 (step t trains on the adversarial batch made at
step t - tau from theta_t-tau; the first tau steps attack their own batch) and the shared
pass (step t trains on clean batch t + 1 and the buffered FGSM of batch t, and buffers
FGSM(theta_t; batch t + 1)), against NumPy by hand (``tests/conadv/test_conadv.py``'s
``np_attack`` / ``np_step``: sign of (p - onehot) W^T, SGD on (L_clean + L_adv) / 2).
Weights and buffer after every step; the model runs in a JAX process with TensorFlow
blocked (``tests/workers/conadv_linear.py``)."""

from __future__ import annotations

import sys

import numpy as np

from tests.conadv.test_conadv import EPS, LR, STEP, D, K, N, np_attack, np_step
from tests.engine.test_jax_data_parallel import jax_env, load
from tests.processes import WORKERS, run_checked


def problem(tmp_path):  # noqa: ANN001, ANN201
    rng = np.random.default_rng(13)
    xs = rng.uniform(0.2, 0.8, (5, N, D)).astype("float32")
    ys = rng.integers(0, K, (5, N)).astype("int32")
    w0 = rng.normal(0, 0.3, (D, K)).astype("float32")
    b0 = rng.normal(0, 0.1, K).astype("float32")
    path = tmp_path / "problem.npz"
    np.savez(path, xs=xs, ys=ys, w0=w0, b0=b0, eps=EPS, step=STEP, lr=LR)
    return path, xs, ys, w0, b0


def check(got: dict, name: str, t: int, w, b, buffered, expected) -> None:  # noqa: ANN001
    where = f"{name} step {t}"
    np.testing.assert_allclose(got[f"{name}/{t}/kernel"], w, rtol=1e-4, atol=1e-5, err_msg=where)
    np.testing.assert_allclose(got[f"{name}/{t}/bias"], b, rtol=1e-4, atol=1e-5, err_msg=where)
    np.testing.assert_allclose(buffered, expected, atol=1e-6, err_msg=where)


def test_separate_and_shared_schedules_on_jax_match_numpy_by_hand(tmp_path):
    path, xs, ys, w0, b0 = problem(tmp_path)
    out = tmp_path / "out.npz"
    run_checked([sys.executable, str(WORKERS / "conadv_linear.py"), str(path), str(out)],
                jax_env())  # fmt: skip
    got = load(out)
    assert str(got["backend"]) == "jax"
    for tau in (1, 2):
        name, w, b, made, fresh_differs = f"separate-tau{tau}", w0 * 1.0, b0 * 1.0, {}, False
        for t in range(len(xs) - tau):
            future = np_attack(w, b, xs[t + tau], ys[t + tau])  # theta_t, batch t + tau
            adv = made[t] if t >= tau else np_attack(w, b, xs[t], ys[t])
            fresh_differs |= t >= tau and bool(np.abs(adv - np_attack(w, b, xs[t], ys[t])).max())
            w, b = np_step(w, b, xs[t], adv, ys[t], ys[t])
            made[t + tau] = future
            check(got, name, t, w, b, got[f"{name}/{t}/buffer"][t % tau], future)
        assert fresh_differs  # the stale examples are not what DisAdv would have used
    w, b = w0 * 1.0, b0 * 1.0
    adversarial = np_attack(w, b, xs[0], ys[0])  # step 0: nothing buffered
    for t in range(len(xs) - 1):
        made = np_attack(w, b, xs[t + 1], ys[t + 1])  # theta_t's gradient at batch t + 1
        w, b = np_step(w, b, xs[t + 1], adversarial, ys[t + 1], ys[t])
        check(got, "shared", t, w, b, got[f"shared/{t}/buffer"][0], made)
        adversarial = made
