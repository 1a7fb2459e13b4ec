"""ConAdv's trainer: baseline, DisAdv and two ConAdv schedules, one ``train_step``.

Paper: Liu et al., "Concurrent Adversarial Learning for Large-Batch Training", ICLR 2022,
arXiv:2106.00221; §3.2 (DisAdv) and §3.3 (ConAdv, eq. 3-5):

baseline  theta_t+1 = theta_t - eta grad L(theta_t; B_t)
disadv    x_hat_t   = PGD(theta_t; B_t)                        (its own forward + backward)
          theta_t+1 = theta_t - eta/2 grad [L(theta_t; B_t) + L(theta_t; x_hat_t)]  (eq. 2)
conadv    theta_t+1 = theta_t - eta/2 grad [L(theta_t; B_t) + L(theta_t; x_hat_t)]  (eq. 4)
          x_hat_t   made at step t - tau from theta_t-tau                           (eq. 5)

ConAdv's two ways to make the next adversarial batch (``ConAdvConfig.attack_pass``):

* ``separate``: beside the update, PGD on batch t + tau from a snapshot of theta_t
  (``concurrent_work``, a stateless call through the *auxiliary* BN in training mode);
  nothing of the update consumes it, so the two may run at once, but every device does
  DisAdv's FLOPs.  The first tau steps fall back to DisAdv (``stale_fraction``).
* ``shared``: step t runs ONE forward/backward over [clean batch t+1; adversarial
  batch t] (clean rows through the main BN, adversarial rows through the auxiliary BN);
  its weight gradient is the update's and the clean rows' input gradient makes
  ``x + alpha sign(g)`` (projected), the adversarial batch of step t+1.  Deviations from
  the paper: FGSM from the clean point (no random start), the gradient through the main
  BN in training mode, and the clean half of step t is batch t+1.  tau = 1 only.

The buffer of adversarial batches in flight (images with their labels) is non-trainable
variables of the trainer, checkpointed, and per worker (``per_worker_variables``: never
broadcast).  PGD's random start of a micro-batch is keyed by (seed, step, its index in
the global batch), so 2 workers x B/2 draw the noise of 1 process of 2 micro-batches.
``adv_time_s``: the PGD attacks' wall time (0 for baseline; for ``shared`` only the
step-0 fallback: the attack gradient comes with the update's backward).

``mixed_float16``: the attack's loss is multiplied by the loss scale (so float16 input
gradients do not underflow), and at too large a scale its input gradient overflows.  A
non-finite entry never reaches the examples (that pixel keeps its start / clean value,
``pgd``), and the overflow is folded into the step's gradients (``update.fold_overflow``)
so the ``LossScaleOptimizer`` skips the step and halves its scale, as for any overflow;
it is not a non-finite step.  DisAdv, the fallback steps and the shared pass fold it
into the step that made the examples; the separate schedule's next-batch attack runs
beside the update, which must not wait for it, so its overflow is kept in
``adv_buffer_overflow`` (per worker, checkpointed) and folded into the next step.
``attack_overflows``: the fraction of steps whose decision got such an overflow (this
worker's attacks).

```python
import keras, numpy as np, tensorflow as tf
from adv_large_batch.conadv import ConAdv, ConAdvConfig, pair_with_future
from adv_large_batch.models.image_models import build_image_model
from adv_large_batch.optimizers import LARS

network = build_image_model("cifar_resnet8", (28, 28, 1), num_classes=10, width=4)
model = ConAdv(network, ConAdvConfig(method="conadv", eps=4, staleness=1), batch_size=16)
model.compile(optimizer=LARS(5.0), metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
images = np.random.rand(64, 28, 28, 1).astype("float32")   # in [0, 1]
train_batches = tf.data.Dataset.from_tensor_slices((images, np.arange(64) % 10))
train_batches = train_batches.batch(16, drop_remainder=True).repeat()
model.fit(pair_with_future(train_batches, 1), epochs=1, steps_per_epoch=2)
```
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from adv_large_batch import keras_internals
from adv_large_batch.conadv import pgd
from adv_large_batch.conadv.inputs import (
    batch_rows_message,
    check_batch_rows,
    dataset_inputs_spec,
    image_parts,
    static_rows,
)
from adv_large_batch.conadv.method import ConAdvMethod
from adv_large_batch.conadv.paired_keys import IMAGES, NEXT_IMAGES, NEXT_LABELS
from adv_large_batch.engine import randomness, update
from adv_large_batch.engine.batching import batch_size_of
from adv_large_batch.engine.timing import timed
from adv_large_batch.engine.trainer import AccumulatingTrainer, distribution_loss_scale
from adv_large_batch.models.split_batchnorm import split_bn_route

# The random-draw streams of the two attacks of a step (current batch, future batch).
_CURRENT, _FUTURE = randomness.CONADV_CURRENT, randomness.CONADV_FUTURE


def read(variable: keras.Variable) -> tf.Tensor:
    """The variable's value now, as a tensor (one ReadVariableOp; not a lazy handle)."""
    return tf.identity(variable.value)


def mean_cross_entropy(y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Mean sparse cross-entropy of logits (the attack loss when none is compiled)."""
    return tf.reduce_mean(
        keras.losses.sparse_categorical_crossentropy(y, tf.cast(logits, tf.float32), True)
    )


@keras.saving.register_keras_serializable(package="adv_large_batch")
class ConAdv(ConAdvMethod, AccumulatingTrainer):
    """Baseline / DisAdv / ConAdv training of an image classifier that outputs logits.

    ```python
    import keras, numpy as np
    from adv_large_batch.conadv import ConAdv, ConAdvConfig
    from adv_large_batch.models.image_models import build_image_model

    network = build_image_model("cifar_resnet8", (28, 28, 1), num_classes=10, width=4)
    model = ConAdv(network, ConAdvConfig(method="disadv", eps=4))
    model.compile(optimizer="sgd", metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = np.random.rand(64, 28, 28, 1).astype("float32")   # in [0, 1]
    labels = np.random.randint(0, 10, 64)
    model.fit(images, labels, batch_size=32, epochs=1)   # Epoch 1/1 - 2/2 - loss ... img/s
    ```

    Real images from Python: ``adv_large_batch.data.image_tasks.load_image_task`` (NumPy
    arrays in ``[0, 1]``).  ConAdv with ``staleness >= 1`` trains on
    ``pair_with_future(batches, staleness)`` (see the module docstring).

    Inputs are checked before any work (``conadv/inputs.py``):

    * images must be floats in ``[0, 1]``; images outside, e.g. ``uint8`` 0-255, are
      refused with the dtype or range seen, not converted (a silent conversion would hide
      a pipeline that feeds other data elsewhere).  ``fit`` / ``evaluate`` / ``predict``
      read a NumPy array's (or eager tensor's) min and max; a ``tf.data.Dataset`` is judged
      by its spec only (integer images are refused, floats are not read ahead);
    * with ``staleness >= 1`` every training batch has ``batch_size`` rows per replica: a
      paired dataset of another static batch size is refused when ``fit`` starts, any other
      batch when the step is traced (or, for a dynamic batch dimension, when it arrives),
      with ``batch_size=``, the rows seen and what to do (``drop_remainder=True``).

    Args: ``ConAdvMethod``'s (``conadv/method.py``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The attacks' non-finite gradient counts of the step being traced.
        self._attack_overflows: list[tf.Tensor] = []

    def buffer_variable(self, name: str, shape: tuple[int, ...], dtype: str) -> keras.Variable:
        """Per replica and worker: read on the replica, never aggregated or broadcast."""
        per_worker = {"synchronization": "on_read", "aggregation": "only_first_replica"}
        return keras.Variable(tf.zeros(shape, dtype), trainable=False, name=name, **per_worker)

    def network_inputs(self, x: Any, y: Any = None) -> tuple[Any, Any]:
        """``AccumulatingTrainer.network_inputs``, then the images checked before any work:
        floats in ``[0, 1]`` (``inputs.check_pixel_range``) and, with ``staleness >= 1``, a
        paired dataset's static batch of ``batch_size`` rows per replica."""
        x, y = super().network_inputs(x, y)
        self.check_images(x)
        if self.config.buffered and isinstance(x, tf.data.Dataset):
            spec = dataset_inputs_spec(x)
            if isinstance(spec, dict) and NEXT_IMAGES in spec:  # training data
                replicas = self.distribute_strategy.num_replicas_in_sync
                check_batch_rows(self.batch_size, static_rows(image_parts(spec)), replicas)
        return x, y

    # ---- the attack ------------------------------------------------------------------
    def weights_snapshot(self) -> tuple[list[tf.Tensor], list[tf.Tensor], tf.Tensor]:
        """This step's weights, BN statistics and loss scale as tensors (read once)."""
        with tf.name_scope("weights_snapshot"):
            trainable = [read(v) for v in self.network.trainable_variables]
            state = [read(v) for v in self.network.non_trainable_variables]
            loss_scale = tf.identity(self.optimizer.scale_loss(tf.constant(1.0)))
        return trainable, state, loss_scale

    def attack_loss(self, y: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
        """The compiled task loss (labels as the target), without regularisers."""
        compiled = keras_internals.compile_loss(self)
        if compiled is not None:
            return compiled(y, logits)
        return mean_cross_entropy(y, logits)

    def attack(self, x: tf.Tensor, y: tf.Tensor, snapshot: tuple, seed: tf.Tensor) -> tf.Tensor:
        """PGD examples of one micro-batch: snapshot weights, auxiliary BN in training mode."""
        return self.attack_with_overflow(x, y, snapshot, seed)[0]

    def attack_with_overflow(
        self, x: tf.Tensor, y: tf.Tensor, snapshot: tuple, seed: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """``(attack(...), n)``: ``n`` non-finite input-gradient entries (float32)."""
        trainable, state, loss_scale = snapshot
        cfg = self.config

        def loss_fn(x_in: tf.Tensor) -> tf.Tensor:
            with split_bn_route(self.network, "aux"):
                logits, _ = self.network.stateless_call(trainable, state, x_in, training=True)
            return self.attack_loss(y, logits) * tf.cast(loss_scale, tf.float32)

        return pgd.pgd_attack_with_overflow(
            loss_fn, x, cfg.eps_unit, cfg.step_unit, seed, cfg.steps, cfg.random_init
        )

    def adversarial_batch(
        self, x: tf.Tensor, y: tf.Tensor, snapshot: tuple, purpose: int
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """PGD examples of a per-replica batch, one micro-batch at a time, and the count of
        non-finite input-gradient entries (``attack_with_overflow``).

        The random start of micro-batch i is drawn from (seed, purpose, step, its index in
        the global batch): 2 workers x n micro-batches draw what 1 process x 2n draws.
        """

        def one(xi: tf.Tensor, yi: tf.Tensor, micro: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            key = self.draw_key(purpose, micro=micro)
            return self.attack_with_overflow(xi, yi, snapshot, key)

        return self.per_micro_batch(one, x, y)

    def per_micro_batch(self, fn: Any, x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``fn(x_i, y_i, global micro-batch index) -> (rows, non-finite count)`` over this
        replica's micro-batches, one at a time (BatchNorm's batch statistics are each
        micro-batch's, as in the update's passes); the rows in order, the counts summed."""
        m = self.micro_batch_size
        if m is None:
            return fn(x, y, self.global_micro_index(0, 1))
        batch = batch_size_of(x)
        n = batch // m
        xs = tf.reshape(x, tf.concat([[n, m], tf.shape(x)[1:]], axis=0))
        ys = tf.reshape(y, tf.concat([[n, m], tf.shape(y)[1:]], axis=0))

        def one(args: tuple) -> tuple[tf.Tensor, tf.Tensor]:
            i, xi, yi = args
            return fn(xi, yi, self.global_micro_index(i, n))

        out, nonfinite = tf.map_fn(
            one,
            (tf.range(n), xs, ys),
            fn_output_signature=(
                tf.TensorSpec([m, *x.shape[1:]], x.dtype),
                tf.TensorSpec([], tf.float32),
            ),
            parallel_iterations=1,
        )
        return tf.reshape(out, tf.shape(x)), tf.reduce_sum(nonfinite)

    def timed_attack(
        self, x: tf.Tensor, y: tf.Tensor, snapshot: tuple, purpose: int
    ) -> tuple[tuple[tf.Tensor, tf.Tensor], tf.Tensor]:
        """``(adversarial_batch(...), seconds)``: the attack's wall time (``adv_time_s``)."""
        return timed(lambda xs, ys: self.adversarial_batch(xs, ys, snapshot, purpose), x, y)

    # ---- the step ----------------------------------------------------------------------
    def prepare_batch(self, x: Any, y: Any, sample_weight: Any) -> tuple[Any, Any, Any]:
        """(clean, adversarial) images and labels of this step; attack first for DisAdv."""
        cfg = self.config
        paired = isinstance(x, dict) and NEXT_IMAGES in x
        images = x[IMAGES] if isinstance(x, dict) else x
        self._attack_overflows = []
        if not cfg.adversarial:
            return images, y, sample_weight
        if not cfg.buffered:
            with tf.name_scope("current_batch_attack"):
                (adv, nonfinite), seconds = self.timed_attack(
                    images, y, self.weights_snapshot(), _CURRENT
                )
            self.record_adv_seconds(seconds)
            self._attack_overflows.append(nonfinite)
            return (images, adv), (y, y), sample_weight
        if not paired:
            raise ValueError(
                "ConAdv with staleness >= 1 trains on paired batches: wrap the (images, labels) "
                "dataset in adv_large_batch.conadv.pair_with_future(dataset, staleness)"
            )
        if sample_weight is not None:
            raise ValueError("ConAdv with staleness >= 1 does not support sample weights")
        x = self._with_buffer_rows(x)
        images = x[IMAGES]
        if cfg.shared:
            return self._shared_batch(x, y)
        step = self._step  # the batch counter: every step advances it, applied or skipped
        slot, ready = step % cfg.staleness, step >= cfg.staleness
        buffered_images = tf.gather(self.buffer_images.value, slot)
        buffered_labels = tf.gather(self.buffer_labels.value, slot)

        # The last step's next-batch attack: its overflow lowers the scale at this step.
        self._attack_overflows.append(read(self.buffer_overflow))

        def fresh() -> tuple[tf.Tensor, ...]:  # the first tau steps: DisAdv
            with tf.name_scope("current_batch_attack"):
                (adv, nonfinite), seconds = self.timed_attack(
                    images, y, self.weights_snapshot(), _CURRENT
                )
            return adv, tf.cast(y, tf.int32), seconds, nonfinite

        def buffered() -> tuple[tf.Tensor, ...]:
            return buffered_images, buffered_labels, tf.constant(0.0), tf.constant(0.0)

        adv, adv_labels, seconds, nonfinite = tf.cond(ready, buffered, fresh)
        self.record_adv_seconds(seconds)
        self._attack_overflows.append(nonfinite)
        self.stale_tracker.update_state(tf.cast(ready, tf.float32))
        return (images, adv), (y, tf.cast(adv_labels, y.dtype)), sample_weight

    def _with_buffer_rows(self, x: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """The paired element ``x``, its images and next images checked to have
        ``batch_size`` rows (this replica's): at trace time where static, else by an
        assertion that the returned images wait for."""
        checks = []
        for key in (IMAGES, NEXT_IMAGES):
            rows = static_rows([x[key]])
            check_batch_rows(self.batch_size, rows)
            if rows is None:
                message = batch_rows_message(self.batch_size, None)
                checks.append(
                    tf.debugging.assert_equal(tf.shape(x[key])[0], self.batch_size, message)
                )
        if not checks:
            return x
        with tf.control_dependencies(checks):
            return {**x, IMAGES: tf.identity(x[IMAGES]), NEXT_IMAGES: tf.identity(x[NEXT_IMAGES])}

    # ---- the shared pass ----------------------------------------------------------------
    def fgsm_with_overflow(
        self, x: tf.Tensor, y: tf.Tensor, snapshot: tuple
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """``(x + alpha sign(grad_x L)`` projected to the ball and [0, 1], ``n``): the
        gradient taken at the clean point through the main BN in training mode (the shared
        pass's rule), as a stateless call (the moving statistics do not move); ``n``: its
        non-finite entries (float32), where the clean pixel is kept."""
        trainable, state, loss_scale = snapshot
        cfg = self.config

        def loss_fn(x_in: tf.Tensor) -> tf.Tensor:
            with split_bn_route(self.network, "main"):
                logits, _ = self.network.stateless_call(trainable, state, x_in, training=True)
            return self.attack_loss(y, logits) * tf.cast(loss_scale, tf.float32)

        grad = pgd.input_gradient(loss_fn, tf.stop_gradient(x))
        examples = pgd.shared_pass_examples(x, grad, cfg.eps_unit, cfg.step_unit)
        return examples, pgd.nonfinite_entries(grad)

    def _shared_batch(self, x: dict[str, tf.Tensor], y: tf.Tensor) -> tuple[Any, Any, None]:
        """Step t of the shared pass: clean rows = batch t + 1, adversarial rows = the
        buffered examples of batch t (made at step t - 1); at step 0 nothing is buffered
        and the examples of batch 0 are made here, by ``fgsm_with_overflow`` at theta_0,
        micro-batch by micro-batch (BN statistics of each micro-batch, as at later steps:
        P workers then make what one process makes on the global batch)."""
        images = x[IMAGES]
        ready = self._step >= 1

        def fresh() -> tuple[tf.Tensor, ...]:
            with tf.name_scope("current_batch_attack"):
                snapshot = self.weights_snapshot()
                (adv, nonfinite), seconds = timed(
                    lambda xs, ys: self.per_micro_batch(
                        lambda xi, yi, _: self.fgsm_with_overflow(xi, yi, snapshot), xs, ys
                    ),
                    images,
                    y,
                )
            return adv, tf.cast(y, tf.int32), seconds, nonfinite

        def buffered() -> tuple[tf.Tensor, ...]:
            # (an overflow of the backward that made them was folded into that step)
            images_t, labels_t = self.buffer_images.value[0], self.buffer_labels.value[0]
            return images_t, labels_t, tf.constant(0.0), tf.constant(0.0)

        adv, adv_labels, seconds, nonfinite = tf.cond(ready, buffered, fresh)
        self.record_adv_seconds(seconds)
        self._attack_overflows.append(nonfinite)
        self.stale_tracker.update_state(tf.cast(ready, tf.float32))
        # The buffered rows are perturbations of this element's images (batch t).
        self.linf_tracker.update_state(pgd.linf_distance(adv, images) * pgd.PIXEL_SCALE)
        clean_labels = tf.cast(x[NEXT_LABELS], y.dtype)
        return (x[NEXT_IMAGES], adv), (clean_labels, tf.cast(adv_labels, y.dtype)), None

    def emitted_specs(self) -> dict[str, tuple[Any, tuple[int, ...]]]:
        if not self.config.shared:
            return {}
        return {
            "next_adversarial": (tf.float32, tuple(self.network.input_shape[1:])),
            "next_adversarial_overflow": (tf.float32, ()),  # non-finite entries per row
        }

    def accumulated_gradients(self, x: Any, y: Any, sample_weight: Any) -> list[tf.Tensor]:
        grads = super().accumulated_gradients(x, y, sample_weight)
        if self.config.shared:  # the examples of batch t + 1, from this step's own backward
            (clean, _), (clean_labels, _) = x, y
            adv = tf.reshape(self.emitted_rows("next_adversarial"), tf.shape(clean))
            with tf.name_scope("adv_buffer_write"):
                self.buffer_images.assign(adv[None])
                self.buffer_labels.assign(tf.cast(clean_labels, tf.int32)[None])
            self._attack_overflows.append(
                tf.reduce_sum(self.emitted_rows("next_adversarial_overflow"))
            )
        if not self.config.adversarial:
            return grads
        # An attack whose loss-scaled input gradient overflowed lowers the loss scale.
        counts, self._attack_overflows = self._attack_overflows, []
        overflowed = tf.add_n(counts) > 0.0 if counts else tf.constant(False)
        self.attack_overflow_tracker.update_state(tf.cast(overflowed, tf.float32))
        return update.fold_overflow(self.optimizer, grads, overflowed)

    def concurrent_work(self, data: Any) -> None:
        """ConAdv: the adversarial examples of batch t + tau, from this step's weights."""
        if not self.config.buffered or self.config.shared:
            return
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        snapshot = self.weights_snapshot()
        with tf.name_scope("next_batch_attack"):
            (adv, nonfinite), seconds = self.timed_attack(
                x[NEXT_IMAGES], x[NEXT_LABELS], snapshot, _FUTURE
            )
        self.record_adv_seconds(seconds)  # the step's end waits for it; the update does not
        with tf.name_scope("adv_buffer_write"):
            slot = self._step % self.config.staleness
            index = tf.reshape(slot, [1, 1])
            self.buffer_images.assign(
                tf.tensor_scatter_nd_update(self.buffer_images.value, index, adv[None])
            )
            labels = tf.cast(x[NEXT_LABELS], tf.int32)
            self.buffer_labels.assign(
                tf.tensor_scatter_nd_update(self.buffer_labels.value, index, labels[None])
            )
            # Read by the next step's prepare_batch (this step read the last one's before).
            self.buffer_overflow.assign(nonfinite)

    def micro_batch_gradients(self, x: Any, y: Any, sample_weight: Any) -> list[tf.Tensor]:
        if not self.config.adversarial:
            return super().micro_batch_gradients(x, y, sample_weight)
        (clean, adv), (y_clean, y_adv) = x, y
        m = batch_size_of(clean)
        self.reseed_dropout()
        shared = self.config.shared
        with tf.GradientTape() as tape:
            if shared:
                tape.watch(clean)  # its input gradient makes the next adversarial batch
            with split_bn_route(self.network, "split"):
                logits = self.network(tf.concat([clean, adv], axis=0), training=True)
            clean_logits, adv_logits = logits[:m], logits[m:]
            clean_loss = self.task_loss(clean, y_clean, clean_logits, sample_weight)
            adv_loss = self.task_loss(adv, y_adv, adv_logits, sample_weight)
            loss = 0.5 * (clean_loss + adv_loss)  # eq. (2) / (4)
            scaled = self.optimizer.scale_loss(loss)
        if shared:  # one backward: the weight gradients and the clean rows' input gradient
            *grads, input_grad = tape.gradient(scaled, [*self.trainable_variables, clean])
            cfg = self.config
            self.emit(
                "next_adversarial",
                pgd.shared_pass_examples(clean, input_grad, cfg.eps_unit, cfg.step_unit),
            )
            self.emit("next_adversarial_overflow", pgd.nonfinite_entries(input_grad, per_row=True))
        else:
            grads = tape.gradient(scaled, self.trainable_variables)
        self.update_task_metrics(loss, y_clean, clean_logits, sample_weight)
        unscale = 1.0 / distribution_loss_scale()
        self.clean_loss_tracker.update_state(clean_loss * unscale)
        self.adv_loss_tracker.update_state(adv_loss * unscale)
        hits = tf.equal(
            tf.argmax(adv_logits, axis=-1, output_type=tf.int32), tf.cast(y_adv, tf.int32)
        )
        self.adv_accuracy_tracker.update_state(tf.reduce_mean(tf.cast(hits, tf.float32)))
        if not shared:  # (shared: the adversarial rows perturb another batch; see above)
            self.linf_tracker.update_state(pgd.linf_distance(adv, clean) * pgd.PIXEL_SCALE)
        return grads
