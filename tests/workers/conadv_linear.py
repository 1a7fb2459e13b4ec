"""ConAdv's schedules on a linear model, on the JAX backend, for the hand-checked tests:
``python tests/workers/conadv_linear.py PROBLEM.npz OUT.npz`` (TensorFlow blocked).

``PROBLEM.npz`` holds ``xs`` ``[T + tau, N, D]``, ``ys``, ``w0``, ``b0`` and the knobs
``eps``, ``step``, ``lr``; for each schedule of ``SCHEDULES`` (name -> ConAdvConfig knobs)
the worker builds ``Dense(K)`` with ``(w0, b0)``, SGD(lr), no random start, and trains on the
paired elements ``({images: x_t, next_images: x_t+tau, next_labels: y_t+tau}, y_t)``
(``tau`` = the schedule's staleness) one ``train_on_batch`` at a time; ``OUT.npz`` gets the
kernel, the bias and the buffer after every step.  The expected values are computed by
hand in NumPy by ``tests/conadv/test_conadv_linear_jax.py``.
"""

from __future__ import annotations

import sys

SCHEDULES = {
    "separate-tau1": {"method": "conadv", "staleness": 1},
    "separate-tau2": {"method": "conadv", "staleness": 2},
    "shared": {"method": "conadv", "staleness": 1, "attack_pass": "shared"},
}


def run(name: str, problem: dict, results: dict) -> None:
    import keras
    import numpy as np

    from adv_large_batch.conadv import IMAGES, NEXT_IMAGES, NEXT_LABELS, ConAdv, ConAdvConfig

    xs, ys, w0, b0 = (problem[k] for k in ("xs", "ys", "w0", "b0"))
    knobs = SCHEDULES[name]
    tau = knobs["staleness"]
    eps, step, lr = (float(problem[k]) for k in ("eps", "step", "lr"))
    network = keras.Sequential([keras.Input((w0.shape[0],)), keras.layers.Dense(w0.shape[1])])
    network.layers[-1].set_weights([w0, b0])
    config = ConAdvConfig(eps=eps, step_size=step, random_init=False, **knobs)
    model = ConAdv(network, config, batch_size=xs.shape[1], seed=0)
    model.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    for t in range(len(xs) - tau):
        x = {IMAGES: xs[t], NEXT_IMAGES: xs[t + tau], NEXT_LABELS: ys[t + tau]}
        model.train_on_batch(x, ys[t])
        kernel, bias = network.layers[-1].get_weights()
        results[f"{name}/{t}/kernel"], results[f"{name}/{t}/bias"] = kernel, bias
        results[f"{name}/{t}/buffer"] = np.asarray(model.buffer_images.value)


def main(problem_path: str, out: str) -> None:
    import keras
    import numpy as np

    with np.load(problem_path) as data:
        problem = {k: data[k] for k in data.files}
    results = {"backend": np.array(keras.config.backend())}
    for name in SCHEDULES:
        run(name, problem, results)
    np.savez(out, **results)


if __name__ == "__main__":
    import no_tensorflow  # tests/workers/, this script's folder

    no_tensorflow.block()
    main(sys.argv[1], sys.argv[2])
