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

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from adv_large_batch.engine import randomness
from adv_large_batch.engine.timing import timed
from adv_large_batch.engine.trainer import AccumulatingTrainer, distribution_loss_scale
from adv_large_batch.models.inputs import (
    PADDING_MASK,
    TOKEN_IDS,
    PerturbableClassifier,
    trim_to_longest,
)
from adv_large_batch.scala import perturbation
from adv_large_batch.scala.config import ScaLAConfig
from adv_large_batch.scala.injection import DelayedInjection


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
class ScaLA(AccumulatingTrainer):
    """ScaLA training of a ``PerturbableBertClassifier`` (see the module docstring).

    Args:
        network: a ``PerturbableBertClassifier``.
        config: a ``ScaLAConfig``; ``method="baseline"`` trains without perturbation.
        micro_batch_size: rows per pass; the per-worker batch is a multiple of it.
        backend: distributed backend (default: this process's).
        seed: the run seed of the random starts and dropout masks.
        steps_per_epoch: steps of one epoch of the run, for t_s given in epochs
            (``DelayedInjection``); default: each ``fit``'s own ``steps``.
    """

    def __init__(
        self,
        network: PerturbableClassifier,
        config: ScaLAConfig | dict | None = None,
        micro_batch_size: int | None = None,
        backend: Any = None,
        seed: int | None = None,
        steps_per_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            network, micro_batch_size=micro_batch_size, backend=backend, seed=seed, **kwargs
        )
        self.steps_per_epoch = steps_per_epoch
        if isinstance(config, dict):
            config = ScaLAConfig(**config)
        self.config = config or ScaLAConfig()
        self.regression = network.num_classes == 1
        # t_s in optimizer steps; DelayedInjection sets it from the epoch at fit time.
        start = self.config.start_step if self.config.start_step is not None else 0
        self.adv_start_step = keras.Variable(
            start, dtype="int64", trainable=False, name="adv_start_step"
        )
        self.task_loss_tracker = self.add_tracker("task_loss")
        self.reg_tracker = self.add_tracker("regulariser")
        self.reg_start_tracker = self.add_tracker("regulariser_y0")
        self.linf_tracker = self.add_tracker("perturbation_linf")
        self.l2_tracker = self.add_tracker("perturbation_l2")
        self.adv_on_tracker = self.add_tracker("adv_on")

    # ---- switches ------------------------------------------------------------------
    def adversarial_active(self) -> tf.Tensor:
        if not self.config.perturbs:
            return tf.constant(False)
        return tf.greater_equal(tf.cast(self.optimizer.iterations, tf.int64), self.adv_start_step)

    def prepare_batch(self, x: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
        if self.micro_batch_size is None:
            return x, y, sample_weight
        return sort_by_length(x, y, sample_weight)

    # ---- the adversarial regulariser -----------------------------------------------------
    def _target(self, clean_logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        if self.config.adv_target == "labels":
            return y
        return tf.stop_gradient(tf.cast(clean_logits, tf.float32))

    def _pass(self, index: int) -> int:
        """The dropout key of forward pass ``index`` of a micro-batch (0 = clean)."""
        return 0 if self.config.dropout == "shared" else index

    def _radius(self, e: tf.Tensor, x: dict[str, tf.Tensor]) -> tuple[Any, Any, Any]:
        """(eps, rho, noise scale): numbers, or ``[B, 1, 1]`` tensors for ``relative``."""
        cfg = self.config
        noise = cfg.eps if cfg.noise_scale is None else cfg.noise_scale
        if cfg.radius == "absolute":
            return cfg.eps, cfg.step_size, noise
        rms = tf.stop_gradient(perturbation.embedding_rms(e, x[PADDING_MASK]))
        return cfg.eps * rms, cfg.step_size * rms, noise * rms

    def _perturbation(
        self, e: tf.Tensor, x: dict[str, tf.Tensor], target: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """(y_K, r(y0)): the perturbation fed to the final adversarial pass."""
        cfg = self.config
        shape = tf.shape(e)
        if cfg.method == "rdrop":
            return tf.zeros(shape, tf.float32), tf.constant(0.0)
        eps, step, noise = self._radius(e, x)
        seed = self.draw_key(randomness.SCALA_START)
        if cfg.method == "gaussian":
            y = perturbation.random_start(shape, eps, "normal", noise, seed)
            return perturbation.mask_padding(y, x[PADDING_MASK]), tf.constant(0.0)
        y0 = perturbation.random_start(shape, eps, cfg.init, noise, seed)
        e_fixed = tf.stop_gradient(tf.cast(e, tf.float32))
        passes = iter(range(1, cfg.steps + 1))

        def regulariser_of(y: tf.Tensor) -> tf.Tensor:
            self.reseed_dropout(self._pass(next(passes)))
            logits = self.network.logits_from_embeddings(
                tf.cast(e_fixed + y, e.dtype), x, training=True
            )
            return perturbation.adversarial_regulariser(
                target, logits, cfg.adv_target, self.regression
            )

        return perturbation.projected_gradient_ascent(
            regulariser_of, y0, step, eps, cfg.steps, cfg.step_norm, x[PADDING_MASK]
        )

    def micro_batch_gradients(self, x: Any, y: Any, sample_weight: Any) -> list[tf.Tensor]:
        x = trim_to_longest(x)
        cfg = self.config
        active = self.adversarial_active()
        with tf.GradientTape() as tape:
            self.reseed_dropout(self._pass(0))
            e = self.network.embed_tokens(x[TOKEN_IDS])
            clean_logits = self.network.logits_from_embeddings(e, x, training=True)
            task = self.task_loss(x, y, clean_logits, sample_weight)
            target = self._target(clean_logits, y)

            def with_perturbation() -> tuple[tf.Tensor, ...]:
                # adv_time_s: random start + PGA-K ascent (R-Drop makes nothing: 0)
                with tape.stop_recording(), tf.name_scope("perturbation"):
                    if cfg.method == "rdrop":
                        (delta, r_start), seconds = self._perturbation(e, x, target), 0.0
                    else:
                        (delta, r_start), seconds = timed(self._perturbation, e, x, target)
                    seconds = tf.convert_to_tensor(seconds, tf.float32)
                self.reseed_dropout(self._pass(cfg.steps + 1))
                adv_logits = self.network.logits_from_embeddings(
                    e + tf.cast(delta, e.dtype), x, training=True
                )
                r = perturbation.adversarial_regulariser(
                    target, adv_logits, cfg.adv_target, self.regression
                )
                linf, l2 = perturbation.perturbation_norms(delta)
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
        self.task_loss_tracker.update_state(task / distribution_loss_scale())
        self.reg_tracker.update_state(r)
        self.reg_start_tracker.update_state(r_start)
        self.linf_tracker.update_state(linf)
        self.l2_tracker.update_state(l2)
        self.adv_on_tracker.update_state(tf.cast(active, tf.float32))
        self.record_adv_seconds(seconds)
        return grads

    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: Any = "auto",
        callbacks: list | None = None,
        **kwargs: Any,
    ) -> Any:
        """``keras.Model.fit`` with ``DelayedInjection`` (the one place it is wired): it sets
        t_s from the epoch (with ``steps_per_epoch``) and announces the switch."""
        callbacks = list(callbacks or [])
        if self.config.perturbs and not any(isinstance(c, DelayedInjection) for c in callbacks):
            callbacks.insert(0, DelayedInjection(self.config.start_epoch, self.steps_per_epoch))
        return super().fit(x, y, batch_size, epochs, verbose, callbacks, **kwargs)

    def get_config(self) -> dict[str, Any]:
        """Keras' config; the ``ScaLAConfig`` under ``adversarial`` (as in the run record)."""
        config = super().get_config()
        config["adversarial"] = dataclasses.asdict(self.config)
        config["steps_per_epoch"] = self.steps_per_epoch
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "ScaLA":
        """Also reads a config saved before, with the ``ScaLAConfig`` under ``config``.

        Registers the perturbable text classifiers first (``register_networks``), so
        ``keras.models.load_model`` needs no ``custom_objects`` for the network.
        """
        cls.register_networks()
        config = dict(config)
        config["config"] = config.pop("adversarial", config.get("config"))  # __init__'s name
        return super().from_config(config)

    @staticmethod
    def register_networks() -> None:
        """Import the networks ScaLA trains (BERT-family and RoBERTa classifiers), which
        registers them with Keras' serialization (imported here, not at module level:
        they pull in keras-hub)."""
        import adv_large_batch.models.perturbable_bert  # noqa: F401
        import adv_large_batch.models.perturbable_roberta  # noqa: F401
