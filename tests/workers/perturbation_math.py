"""ScaLA's inner maximisation (``adv_large_batch.scala.perturbation``) on fixed NumPy
inputs, on whichever Keras backend ``KERAS_BACKEND`` names:
``python tests/workers/perturbation_math.py OUT.npz [--no-tensorflow]``.

For ``tests/scala/test_perturbation_backends.py``: every function's output, and PGA-1 /
PGA-3 (raw, l-inf and l2 steps, probs / labels / regression targets) through a small
differentiable head, from the same y0.  ``--no-tensorflow`` makes importing TensorFlow
fail.
"""

from __future__ import annotations

import sys


def main(out: str) -> None:
    import keras
    import numpy as np
    from keras import ops

    from adv_large_batch.scala import perturbation as p

    rng = np.random.default_rng(0)
    e = rng.normal(size=(4, 5, 8)).astype("float32")
    mask = np.array([[1] * 5, [1] * 3 + [0] * 2, [1] * 4 + [0], [1] + [0] * 4], "int32")
    w = rng.normal(size=(8, 3)).astype("float32")
    target = rng.normal(size=(4, 3)).astype("float32")
    labels = np.array([0, 2, 1, 1], "int32")
    y0 = (rng.uniform(-1, 1, size=e.shape) * 1e-2).astype("float32")
    grad = rng.normal(size=e.shape).astype("float32")
    results = {
        "backend": np.array(keras.config.backend()),
        "project": p.project_linf(ops.convert_to_tensor(grad), 0.5),
        "rms": p.embedding_rms(e, mask),
        "mask": p.mask_padding(ops.convert_to_tensor(grad), mask),
        "sym_kl": p.symmetric_kl_from_logits(target, target[::-1]),
        "label_kl": p.label_kl_from_logits(labels, target),
        "squared": p.squared_error(target[:, 0], target[:, 1]),
        "norms": ops.stack(p.perturbation_norms(ops.convert_to_tensor(grad))),
        "zero_start": p.random_start((2, 3), 1.0, "zero"),
    }
    for norm in p.STEP_NORMS:
        results[f"direction/{norm}"] = p.normalize_gradient(grad, norm)
        results[f"step/{norm}"] = p.ascent_step(
            ops.convert_to_tensor(y0), grad, 1e-2, 2e-2, norm, mask
        )

    def head(y):  # noqa: ANN001, ANN202
        features = ops.mean(ops.tanh(ops.convert_to_tensor(e) + y), axis=1)
        return ops.matmul(features, w)

    regularisers = {
        "probs": lambda y: p.adversarial_regulariser(target, head(y), "probs", False),
        "labels": lambda y: p.adversarial_regulariser(labels, head(y), "labels", False),
        "regression": lambda y: p.adversarial_regulariser(
            target[:, 0], head(y)[:, 0], "probs", True
        ),
    }
    for kind, regulariser_of in regularisers.items():
        for norm in p.STEP_NORMS:
            for steps in (1, 3):
                y, r = p.projected_gradient_ascent(
                    regulariser_of, ops.convert_to_tensor(y0), 1e-2, 2e-2, steps, norm, mask
                )
                results[f"pga/{kind}/{norm}/{steps}/y"] = y
                results[f"pga/{kind}/{norm}/{steps}/r0"] = r
    for kind in ("uniform", "normal"):  # keyed draws: in range, repeatable, seed-dependent
        a = p.random_start((64, 8), 0.1, kind, seed=ops.convert_to_tensor([1, 2]))
        b = p.random_start((64, 8), 0.1, kind, seed=ops.convert_to_tensor([1, 2]))
        c = p.random_start((64, 8), 0.1, kind, seed=ops.convert_to_tensor([1, 3]))
        results[f"draw/{kind}"] = np.array(
            [
                float(ops.max(ops.abs(a))),
                float(ops.max(ops.abs(a - b))),
                float(ops.max(ops.abs(a - c))),
            ]
        )
    np.savez(out, **{k: np.asarray(ops.convert_to_numpy(v)) for k, v in results.items()})


if __name__ == "__main__":
    if "--no-tensorflow" in sys.argv:
        import no_tensorflow  # tests/workers/, this script's folder

        no_tensorflow.block()
    main(sys.argv[1])
