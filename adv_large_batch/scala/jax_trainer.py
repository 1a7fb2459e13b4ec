"""ScaLA on the JAX backend: the same method as ``scala/trainer.py``, in the JAX shell.

``ScaLA`` here is ``ScaLAMethod`` (knobs, t_s, logs, config) on a
``JaxAccumulatingTrainer``; the micro-batch loss is the TensorFlow shell's, written
with ``scala/objective.py``:

    e        = token_embedding(ids)
    logits   = network(e)                       clean pass (dropout key: pass 0)
    f        = task loss
    if optimizer step >= t_s:                   delayed injection (``jax.lax.cond``)
        y_K, r(y0) = random start + PGA-K       (``jax.grad`` w.r.t. y; detached)
        r    = regulariser(target, network(e + y_K))
    loss     = f + lambda * r                   -> ``jax.value_and_grad`` in the shell

Sequences are not trimmed per micro-batch (XLA needs static shapes): the input pads each
batch to a length bucket instead (``data/numpy_batches.py``).  Imported by
``adv_large_batch.scala`` on the JAX backend, which registers it as
``adv_large_batch>ScaLA`` (the TensorFlow class's name: a saved model loads on either).

Example (``KERAS_BACKEND=jax``; no TensorFlow needed):

```python
import os
os.environ.setdefault("KERAS_BACKEND", "jax")
import keras, numpy as np
if keras.config.backend() == "jax":
    from adv_large_batch.models.text_classifiers import build_network
    from adv_large_batch.optimizers import LAMB
    from adv_large_batch.scala import ScaLA, ScaLAConfig

    classifier, tokenizer = build_network("tiny-random", num_classes=2, seed=0)
    x = classifier.preprocessor.encode((["a fine film"] * 8 + ["dull"] * 8,))
    model = ScaLA(classifier, ScaLAConfig(), micro_batch_size=4, seed=0)
    model.compile(optimizer=LAMB(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    model.fit(x, np.array([1] * 8 + [0] * 8), batch_size=16, verbose=0)
```
"""

from __future__ import annotations

from typing import Any

import keras

from adv_large_batch.engine import randomness
from adv_large_batch.engine.jax_trainer import ROWS, SCALARS, JaxAccumulatingTrainer, MicroBatch
from adv_large_batch.models.inputs import PADDING_MASK, TOKEN_IDS
from adv_large_batch.scala import objective
from adv_large_batch.scala.method import ScaLAMethod


def sort_by_length(x: dict[str, Any], y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
    """``scala.trainer.sort_by_length`` on JAX: a stable permutation by sequence length."""
    import jax
    import jax.numpy as jnp

    lengths = jnp.sum(x[PADDING_MASK].astype("int32"), axis=1)
    order = jnp.argsort(lengths, stable=True)

    def take(t: Any) -> Any:
        return None if t is None else jnp.take(t, order, axis=0)

    return jax.tree.map(take, x), take(y), take(sample_weight)


@keras.saving.register_keras_serializable(package="adv_large_batch")
class ScaLA(ScaLAMethod, JaxAccumulatingTrainer):
    """ScaLA training of a ``PerturbableBertClassifier`` on JAX (arguments: ``ScaLAMethod``)."""

    def prepare_batch(self, x: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
        if self.micro_batch_size is None:
            return x, y, sample_weight
        return sort_by_length(x, y, sample_weight)

    def method_trackers(self) -> dict[str, Any]:
        return self.scala_trackers()

    def micro_batch_loss(
        self,
        trainable: list[Any],
        non_trainable: list[Any],
        x: Any,
        y: Any,
        w: Any,
        where: MicroBatch,
    ) -> tuple[Any, dict[str, dict[str, Any]]]:
        import jax
        import jax.numpy as jnp

        cfg = self.config

        def logits_at(embeddings: Any, forward_pass: int) -> Any:
            with self.stateless(trainable, non_trainable, self.dropout_key(where, forward_pass)):
                return self.network.logits_from_embeddings(embeddings, x, training=True)

        with self.stateless(trainable, non_trainable):
            e = self.network.embed_tokens(x[TOKEN_IDS])
        clean = logits_at(e, objective.pass_of(cfg, 0))
        with self.stateless(trainable, non_trainable):
            task = self.task_loss(x, y, clean, w)
        target = objective.target_of(cfg, clean, y)
        # zeros_like keeps the value's sharding type: under shard_map both branches of the
        # cond below must return values that vary over the devices alike
        zero = jnp.zeros_like(task, "float32")
        active = jnp.bool_(False)
        r = r_start = linf = l2 = zero
        if cfg.perturbs:
            active = where.iterations >= self.value_of(self.adv_start_step, where.non_trainable)

            def on(_: Any) -> tuple[Any, ...]:
                start_key = self.draw_key(where, randomness.SCALA_START)
                delta, r0 = objective.perturbation(
                    cfg, logits_at, e, x[PADDING_MASK], target, self.regression, start_key
                )
                r, linf, l2 = objective.adversarial_terms(
                    cfg, logits_at, e, target, self.regression, delta
                )
                return tuple(jnp.asarray(v, "float32") for v in (r, r0, linf, l2))

            r, r_start, linf, l2 = jax.lax.cond(active, on, lambda _: (zero,) * 4, None)
        loss = task + cfg.weight * r
        logged = (task, r, r_start, linf, l2, active.astype("float32"))
        return loss, {ROWS: {"y_pred": clean}, SCALARS: dict(zip(self.scala_trackers(), logged))}


__all__ = ["ScaLA", "sort_by_length"]
