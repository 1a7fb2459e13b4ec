"""ScaLA: large-batch fine-tuning with PGA-K perturbation of the token embeddings.

Paper: ``shared/papers/scala.md``, Algorithm 1 and appendix B.  Per micro-batch:

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
classifier = PerturbableBertClassifier(backbone, num_classes=2)
model = ScaLA(classifier, ScaLAConfig(start_epoch=1), micro_batch_size=32)
model.compile(optimizer=LAMB(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(
    from_logits=True), metrics=["accuracy"])
model.fit(train_ds, epochs=3, validation_data=val_ds)  # perturbation on from epoch 1
```
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras
import tensorflow as tf

from adv_large_batch import adversarial, randomness
from adv_large_batch.config import cli_field, require
from adv_large_batch.models.perturbable_bert import (
    PADDING_MASK,
    TOKEN_IDS,
    PerturbableBertClassifier,
    trim_to_longest,
)
from adv_large_batch.trainer import AccumulatingTrainer, distribution_loss_scale, timed

METHODS = ("baseline", "scala", "gaussian", "rdrop")
DROPOUT_MODES = ("independent", "shared")
RADII = ("absolute", "relative")


@dataclasses.dataclass(frozen=True)
class ScaLAConfig:
    """The adversarial knobs of ScaLA (defaults: appendix B of the paper)."""

    method: str = cli_field(
        "scala",
        "--method",
        "baseline: no perturbation; scala: PGA-K ascent on the embeddings; "
        "gaussian: Gaussian noise instead of the ascent (the paper's ablation); "
        "rdrop: the regulariser between two dropout passes of the same input, no "
        "perturbation (R-Drop-like; what ScaLA's r mostly is at eps 1e-5)",
        METHODS,
    )
    adv_target: str = cli_field(
        "probs",
        "--adv-target",
        "probs: KL against the model's own detached probabilities (LP); labels: ground truth (GT)",
        ("probs", "labels"),
    )
    eps: float = cli_field(1e-5, "--adv-eps", "l-inf radius omega of the perturbation")
    step_size: float = cli_field(1e-4, "--adv-step", "ascent step size rho")
    steps: int = cli_field(1, "--adv-steps", "K, the number of ascent steps (PGA-K)")
    weight: float = cli_field(1.0, "--adv-lambda", "lambda, the weight of the regulariser r")
    start_epoch: int = cli_field(
        0, "--adv-start-epoch", "t_s: no perturbation before this epoch (0 = from the start)"
    )
    start_step: int | None = cli_field(
        None, "--adv-start-step", "t_s in optimizer steps instead of epochs (overrides the epoch)"
    )
    step_norm: str = cli_field(
        "linf",
        "--adv-step-norm",
        "ascent direction: none = raw gradient (paper), linf = gradient / per-example "
        "max-abs (SMART), l2 = gradient / per-example l2 norm (FreeLB)",
        adversarial.STEP_NORMS,
    )
    init: str = cli_field("uniform", "--adv-init", "random start y0", adversarial.START_KINDS)
    noise_scale: float | None = cli_field(
        None, "--adv-noise-scale", "stddev of a normal start / the Gaussian method (default eps)"
    )
    dropout: str = cli_field(
        "independent",
        "--adv-dropout",
        "dropout masks of the clean, ascent and adversarial passes: independent (the "
        "paper, SMART: each pass draws its own, so r also measures mask disagreement) or "
        "shared (one mask for all passes of a micro-batch: r measures the perturbation only)",
        DROPOUT_MODES,
    )
    radius: str = cli_field(
        "absolute",
        "--adv-radius",
        "absolute: --adv-eps/--adv-step/--adv-noise-scale are values (the paper); relative: "
        "they are multiples of each example's token-embedding RMS (FreeLB-like magnitudes)",
        RADII,
    )

    def __post_init__(self) -> None:
        require(self.method in METHODS, f"--method must be one of {METHODS}, got {self.method!r}")
        require(self.eps > 0, f"--adv-eps must be > 0, got {self.eps}")
        require(self.step_size > 0, f"--adv-step must be > 0, got {self.step_size}")
        require(self.weight > 0, f"--adv-lambda must be > 0, got {self.weight}")
        require(self.steps >= 1, f"--adv-steps must be >= 1, got {self.steps}")
        require(
            self.dropout in DROPOUT_MODES,
            f"--adv-dropout must be one of {DROPOUT_MODES}, got {self.dropout!r}",
        )
        require(self.radius in RADII, f"--adv-radius must be one of {RADII}, got {self.radius!r}")
        require(self.start_epoch >= 0, f"--adv-start-epoch must be >= 0, got {self.start_epoch}")
        require(
            self.start_step is None or self.start_step >= 0,
            f"--adv-start-step must be >= 0, got {self.start_step}",
        )
        require(
            self.noise_scale is None or self.noise_scale > 0,
            f"--adv-noise-scale must be > 0, got {self.noise_scale}",
        )

    @property
    def perturbs(self) -> bool:
        return self.method != "baseline"


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
        seed: seed for the random starts.
    """

    def __init__(
        self,
        network: PerturbableBertClassifier,
        config: ScaLAConfig | dict | None = None,
        micro_batch_size: int | None = None,
        backend: Any = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            network, micro_batch_size=micro_batch_size, backend=backend, seed=seed, **kwargs
        )
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
        rms = tf.stop_gradient(adversarial.embedding_rms(e, x[PADDING_MASK]))
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
            y = adversarial.random_start(shape, eps, "normal", noise, seed)
            return adversarial.mask_padding(y, x[PADDING_MASK]), tf.constant(0.0)
        y0 = adversarial.random_start(shape, eps, cfg.init, noise, seed)
        e_fixed = tf.stop_gradient(tf.cast(e, tf.float32))
        passes = iter(range(1, cfg.steps + 1))

        def regulariser_of(y: tf.Tensor) -> tf.Tensor:
            self.reseed_dropout(self._pass(next(passes)))
            logits = self.network.logits_from_embeddings(
                tf.cast(e_fixed + y, e.dtype), x, training=True
            )
            return adversarial.adversarial_regulariser(
                target, logits, cfg.adv_target, self.regression
            )

        return adversarial.projected_gradient_ascent(
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
                r = adversarial.adversarial_regulariser(
                    target, adv_logits, cfg.adv_target, self.regression
                )
                linf, l2 = adversarial.perturbation_norms(delta)
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

    def fit(self, x: Any = None, *args: Any, callbacks: list | None = None, **kwargs: Any) -> Any:
        """``keras.Model.fit``, adding ``DelayedInjection`` when t_s is given in epochs."""
        callbacks = list(callbacks or [])
        needs_switch = self.config.perturbs and self.config.start_step is None
        if needs_switch and not any(isinstance(c, DelayedInjection) for c in callbacks):
            callbacks.insert(0, DelayedInjection(self.config.start_epoch))
        return super().fit(x, *args, callbacks=callbacks, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"config": dataclasses.asdict(self.config)})
        return config


class DelayedInjection(keras.callbacks.Callback):
    """Turns ScaLA's perturbation on at epoch ``t_s`` and says so in the logs.

    ``fit`` does not tell ``train_step`` the epoch, so the switch is kept as
    ``adv_start_step = t_s * steps_per_epoch`` on the model (a variable, so it is
    checkpointed) and compared with the optimizer's step counter.  When the model's
    ``ScaLAConfig.start_step`` gives t_s in steps, that step stands and the callback
    only announces the switch.
    """

    def __init__(self, start_epoch: int, steps_per_epoch: int | None = None, verbose: bool = True):
        super().__init__()
        self.start_epoch = start_epoch
        self.steps_per_epoch = steps_per_epoch
        self.verbose = verbose
        self._switch_epoch: int | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        steps = self.steps_per_epoch or (self.params or {}).get("steps")
        if self.model.config.start_step is None:  # t_s in epochs -> optimizer steps
            if steps is None:
                raise ValueError(
                    "DelayedInjection needs steps_per_epoch: pass it, or give fit a "
                    "dataset of known length"
                )
            self.model.adv_start_step.assign(self.start_epoch * int(steps))
        # else t_s was given in steps (--adv-start-step): it stands, whatever start_epoch is.
        start = int(self.model.adv_start_step.numpy())
        self._switch_epoch = start // int(steps) if steps else None

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if self.verbose and epoch == self._switch_epoch and self.model.config.perturbs:
            print(
                f"\n[ScaLA] epoch {epoch}: adversarial perturbation ON from optimizer step "
                f"{int(self.model.adv_start_step.numpy())} "
                f"(method={self.model.config.method}, eps={self.model.config.eps}, "
                f"rho={self.model.config.step_size}, K={self.model.config.steps})",
                flush=True,
            )
