"""ScaLA: large-batch fine-tuning with PGA-K perturbation of the token embeddings.

Paper: "ScaLA: Speeding-Up Fine-tuning of Pre-trained Transformer Networks via Efficient
and Scalable Adversarial Perturbation" (Zhang et al., arXiv:2201.12469; numbering of the
ICLR 2022 submission, see ``adv_large_batch.scala``), Algorithm 1 and appendix B.  Per
micro-batch:

    e        = token_embedding(ids)                        (shared by all passes)
    logits   = network(e)                                  clean pass
    f        = task loss(labels, logits)
    if step >= t_s:                                        delayed injection
        y0   = random start in the eps ball (padding rows zero)
        y_K  = PGA-K on r(y) = KL_sym(sg(logits), network(e + y))   (no weight grads)
        r    = KL_sym(sg(logits), network(e + y_K))
    loss     = f + lambda * r                              -> weight gradients

The outer minimisation (LAMB with trust-ratio clipping, sqrt LR scaling,
warm-up + linear decay) is the optimizer handed to ``compile``; accumulation
and allreduce come from ``AccumulatingTrainer``.

Step time (``AccumulatingTrainer``'s trackers): ``adv_time_s`` is the seconds
per step spent making the perturbation, the random start y0 and the K ascent
steps (K forward + backward passes w.r.t. y), summed over the micro-batches; the
final adversarial pass that gives r(y_K) and its backward belong to the update.
0 before t_s and for ``method="baseline"``.  The ascent runs before the update,
so ``step_time_s - adv_time_s`` is the update's share (clean + adversarial
passes, accumulation, allreduce, optimizer).

Example:

```python
import keras, tensorflow as tf
from adv_large_batch.data.text_pipeline import tokenize
from adv_large_batch.data.text_tasks import load_rotten_tomatoes
from adv_large_batch.models.text_classifiers import build_network
from adv_large_batch.optimizers import LAMB
from adv_large_batch.scala import ScaLA, ScaLAConfig

classifier, tokenizer = build_network("tiny-random", num_classes=2, seed=0)  # tiny BERT
task = load_rotten_tomatoes()

def batches(split, n):  # the first n examples, 32 tokens each, batches of 16
    split = split.take(n)
    features = tokenize(split, tokenizer, max_seq_length=32)
    return tf.data.Dataset.from_tensor_slices((features, split.labels)).batch(16)

model = ScaLA(classifier, ScaLAConfig(start_epoch=2), micro_batch_size=8)
model.compile(optimizer=LAMB(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(
    from_logits=True), metrics=["accuracy"])
model.fit(batches(task.train, 32), epochs=2,  # perturbation on from epoch 2
          validation_data=batches(task.validation, 16))
```
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from adv_large_batch.engine import randomness
from adv_large_batch.engine.timing import timed
from adv_large_batch.engine.trainer import AccumulatingTrainer, distribution_loss_scale
from adv_large_batch.models.inputs import PADDING_MASK, TOKEN_IDS, trim_to_longest
from adv_large_batch.scala import objective
from adv_large_batch.scala.method import ScaLAMethod


def sort_by_length(x: dict[str, tf.Tensor], y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
    """Permute a batch by sequence length so each micro-batch trims to little padding.

    A permutation inside the batch leaves the batch-mean gradient unchanged.
    """
    lengths = tf.reduce_sum(tf.cast(x[PADDING_MASK], tf.int32), axis=1)
    order = tf.argsort(lengths, stable=True)

    def take(t: Any) -> Any:
        return None if t is None else tf.gather(t, order)

    return tf.nest.map_structure(take, x), take(y), take(sample_weight)


@keras.saving.register_keras_serializable(package="adv_large_batch")
class ScaLA(ScaLAMethod, AccumulatingTrainer):
    """ScaLA training of a ``PerturbableBertClassifier`` on TensorFlow (see the module
    docstring; the arguments are ``ScaLAMethod``'s)."""

    # ---- switches ------------------------------------------------------------------
    def adversarial_active(self) -> tf.Tensor:
        if not self.config.perturbs:
            return tf.constant(False)
        return tf.greater_equal(tf.cast(self.optimizer.iterations, tf.int64), self.adv_start_step)

    def prepare_batch(self, x: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
        if self.micro_batch_size is None:
            return x, y, sample_weight
        return sort_by_length(x, y, sample_weight)

    def _logits_at(self, x: dict[str, tf.Tensor]) -> objective.LogitsAt:
        """``objective.LogitsAt`` on TensorFlow: reseed the dropout generators, then call."""

        def logits_at(embeddings: tf.Tensor, forward_pass: int) -> tf.Tensor:
            self.reseed_dropout(forward_pass)
            return self.network.logits_from_embeddings(embeddings, x, training=True)

        return logits_at

    def _perturbation(self, e: tf.Tensor, x: dict[str, tf.Tensor], target: Any) -> tuple:
        """(y_K, r(y0)) of the current micro-batch (``objective.perturbation``)."""
        start_key = self.draw_key(randomness.SCALA_START)
        return objective.perturbation(
            self.config, self._logits_at(x), e, x[PADDING_MASK], target, self.regression, start_key
        )

    def micro_batch_gradients(self, x: Any, y: Any, sample_weight: Any) -> list[tf.Tensor]:
        x = trim_to_longest(x)
        cfg = self.config
        active = self.adversarial_active()
        logits_at = self._logits_at(x)
        with tf.GradientTape() as tape:
            e = self.network.embed_tokens(x[TOKEN_IDS])
            clean_logits = logits_at(e, objective.pass_of(cfg, 0))
            task = self.task_loss(x, y, clean_logits, sample_weight)
            target = objective.target_of(cfg, clean_logits, y)

            def with_perturbation() -> tuple[tf.Tensor, ...]:
                # adv_time_s: random start + PGA-K ascent (R-Drop makes nothing: 0)
                with tape.stop_recording(), tf.name_scope("perturbation"):
                    if cfg.method == "rdrop":
                        (delta, r_start), seconds = self._perturbation(e, x, target), 0.0
                    else:
                        (delta, r_start), seconds = timed(self._perturbation, e, x, target)
                    seconds = tf.convert_to_tensor(seconds, tf.float32)
                r, linf, l2 = objective.adversarial_terms(
                    cfg, logits_at, e, target, self.regression, delta
                )
                return r, r_start, linf, l2, seconds

            def without() -> tuple[tf.Tensor, ...]:
                zero = tf.constant(0.0)
                return zero, zero, zero, zero, zero

            if cfg.perturbs:
                r, r_start, linf, l2, seconds = tf.cond(active, with_perturbation, without)
            else:
                r, r_start, linf, l2, seconds = without()
            loss = task + cfg.weight * r * distribution_loss_scale()
            scaled = self.optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, self.trainable_variables)
        self.update_task_metrics(loss, y, clean_logits, sample_weight)
        logged = (
            task / distribution_loss_scale(),
            r,
            r_start,
            linf,
            l2,
            tf.cast(active, tf.float32),
        )
        for tracker, value in zip(self.scala_trackers().values(), logged):
            tracker.update_state(value)
        self.record_adv_seconds(seconds)
        return grads
