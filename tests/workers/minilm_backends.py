"""The bundled all-MiniLM-L6-v2 classifier on whichever Keras backend ``KERAS_BACKEND``
names: ``python tests/workers/minilm_backends.py OUT.npz [--no-tensorflow]``.

For ``tests/models/test_models_on_jax.py``: the preprocessor's features of four sentences
(one a pair), the logits, the token-embedding output e, and ScaLA's inner maximisation on
it (PGA-1 and PGA-2 from one fixed y0, the probs target, l-inf and raw steps), dropout off.
The head is initialised from seed 0 on both backends.  ``--no-tensorflow`` makes importing
TensorFlow fail.
"""

from __future__ import annotations

import sys

TEXTS = ["a gripping, beautifully acted film", "a dull, lifeless mess", "fine.", "so-so"]
PAIRS = (["is it good?", "what a film"], ["it is good.", "what a mess"])


def main(out: str) -> None:
    import keras
    import numpy as np
    from keras import ops

    from adv_large_batch.models.perturbable_bert import PerturbableBertClassifier
    from adv_large_batch.scala import perturbation

    network = PerturbableBertClassifier.from_preset(
        "bundled", num_classes=2, sequence_length=16, seed=0
    )
    rng = np.random.default_rng(0)
    head = [
        rng.normal(scale=0.05, size=v.shape).astype("float32") for v in network.output_dense.weights
    ]
    for variable, value in zip(network.output_dense.weights, head):  # the same head on both
        variable.assign(value)
    results = {"backend": np.array(keras.config.backend())}
    for name, batch in (("single", TEXTS), ("pair", PAIRS)):
        x = network.preprocessor.encode(batch)
        results[f"{name}/token_ids"] = x["token_ids"]
        results[f"{name}/logits"] = network(x, training=False)
    x = network.preprocessor.encode(TEXTS)
    e = network.embed_tokens(x["token_ids"])
    results["e"] = e
    clean = ops.stop_gradient(network.logits_from_embeddings(e, x, training=False))
    y0 = (rng.uniform(-1, 1, size=e.shape) * 1e-2).astype("float32")

    def regulariser_of(y):  # noqa: ANN001, ANN202
        logits = network.logits_from_embeddings(e + y, x, training=False)
        return perturbation.adversarial_regulariser(clean, logits, "probs", False)

    for norm in ("none", "linf"):
        for steps in (1, 2):
            y, r0 = perturbation.projected_gradient_ascent(
                regulariser_of, ops.convert_to_tensor(y0), 1e-2, 2e-2, steps, norm,
                x["padding_mask"],
            )  # fmt: skip
            results[f"pga/{norm}/{steps}/y"] = y
            results[f"pga/{norm}/{steps}/r0"] = r0
            results[f"pga/{norm}/{steps}/r"] = regulariser_of(y)
    np.savez(out, **{k: np.asarray(ops.convert_to_numpy(v)) for k, v in results.items()})


if __name__ == "__main__":
    if "--no-tensorflow" in sys.argv:
        import no_tensorflow  # tests/workers/, this script's folder

        no_tensorflow.block()
    main(sys.argv[1])
