"""What the two trainer shells share: the parts of a trainer that are not its step.

``TrainerCommon`` is the backend-neutral half of ``AccumulatingTrainer`` (TensorFlow,
``engine/trainer.py``) and ``JaxAccumulatingTrainer`` (JAX, ``engine/jax_trainer.py``):
the wrapped network and its micro-batch size, the run seed, the checkpointed batch
counter ``batches_seen``, the train-only trackers, ``compile`` with the finite loss mean,
``compile_from_config`` (what ``keras.models.load_model`` calls), the raw-input adapters
of ``fit`` / ``evaluate`` / ``predict`` and ``get_config``.  Only Keras and NumPy here:
importing this module imports no backend library.

A shell adds ``train_step`` (and its backend's hooks ``_default_backend`` and
``_before_fit``).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from adv_large_batch import keras_internals


def counter_dtype() -> str:
    """The dtype of a step counter variable: int64, or int32 on JAX (whose default,
    without ``jax_enable_x64``, has no 64-bit integers); a checkpoint's counter loads into
    either."""
    return "int32" if keras.config.backend() == "jax" else "int64"


def run_seed(seed: int | None = None) -> int:
    """The run seed of a trainer: ``seed`` when given, else Keras' global seed (what
    ``keras.utils.set_random_seed`` set), else 0 -- the same on every Horovod rank and in
    a resumed process, so P workers still draw what one process draws and a resumed run
    what the uninterrupted one drew.  Two notebook runs that differ only in
    ``set_random_seed`` draw different masks and starts."""
    if seed is not None:
        return int(seed)
    global_seed = keras_internals.global_random_seed()
    return 0 if global_seed is None else int(global_seed)


class FiniteMean(keras.metrics.Mean):
    """``keras.metrics.Mean`` whose result is NaN when nothing was counted: an epoch of
    non-finite steps (all counted with weight 0) logs ``loss = nan``, not ``0``."""

    def result(self) -> Any:
        return ops.where(self.count > 0, super().result(), float("nan"))


class TrainerCommon(keras.Model):
    """The backend-neutral half of a trainer shell (see the module docstring).

    Args:
        network: the model being trained (its ``call`` is used for inference).
        micro_batch_size: rows per forward/backward pass; ``None`` = whole batch.
        backend: the data-parallel backend; default: the shell's ``_default_backend()``.
        seed: the run seed of every random draw of the step (dropout masks, random
            starts), combined with the batch counter and the micro-batch's place;
            ``None``: Keras' global seed (``keras.utils.set_random_seed``), else 0.
    """

    def __init__(
        self,
        network: keras.Model,
        micro_batch_size: int | None = None,
        backend: Any = None,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}")
        self.network = network
        self.micro_batch_size = micro_batch_size
        self.backend = self._default_backend() if backend is None else backend
        self.seed = run_seed(seed)  # resolved once: get_config records it
        self._seed = self.seed
        self.batches_seen = keras.Variable(
            0, dtype=counter_dtype(), trainable=False, name="batches_seen"
        )
        #: The optimizer step at which ``NonFiniteLoss`` stopped the run (None: it did not).
        self.stopped_nonfinite_at: int | None = None
        self._train_only_metric_names: set[str] = set()
        self.grad_norm_tracker = self.add_tracker("grad_norm")
        self.nonfinite_tracker = self.add_tracker("nonfinite_steps")
        self.loss_scale_skip_tracker = self.add_tracker("loss_scale_skips")

    # ---- what a shell provides ------------------------------------------------------
    def _default_backend(self) -> Any:
        """The data-parallel backend of this process when none is given."""
        raise NotImplementedError

    def _before_fit(self, x: Any, y: Any = None) -> None:
        """Called by ``fit`` with the training data before Keras' own ``fit`` (nothing)."""

    # ---- plumbing -----------------------------------------------------------------
    def add_tracker(self, name: str) -> keras.metrics.Mean:
        """A per-epoch mean of a train-only scalar (shown in logs and TensorBoard); NaN
        for an epoch that counted nothing (e.g. ``grad_norm`` when no step was applied)."""
        self._train_only_metric_names.add(name)
        return FiniteMean(name=name)

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """``keras.Model.compile``; then the ``loss`` tracker is a ``FiniteMean`` and the
        backend adapts the optimizer (``prepare_optimizer``)."""
        super().compile(*args, **kwargs)
        keras_internals.replace_loss_tracker(self, FiniteMean(name="loss"))
        self.backend.prepare_optimizer(self.optimizer)

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Compile from Keras' ``get_compile_config()`` dict (the serialized ``compile``
        arguments ``model.save`` writes), as ``keras.models.load_model`` does
        before it loads the variables (Keras' own refuses an overridden ``compile``).

        The arguments are deserialized (``engine.saving``: one that cannot be, e.g. an
        unregistered loss, raises ``ValueError`` naming it), passed to this class's
        ``compile``, and the optimizer's variables are built on ``trainable_variables``
        so the load restores ``iterations``, the slots and the loss scale.
        """
        from adv_large_batch.engine import saving

        self.compile(**saving.deserialize_compile_config(config, type(self).__name__))
        saving.build_optimizer_for(self)

    def per_worker_variables(self) -> list[Any]:
        """Variables that hold this worker's own state (never broadcast from rank 0)."""
        return []

    def call(self, inputs: Any, training: bool = False) -> Any:
        return self.network(inputs, training=training)

    def filter_train_only(self, logs: dict[str, Any]) -> dict[str, Any]:
        """``logs`` without the train-only trackers (what ``test_step`` reports)."""
        return {k: v for k, v in logs.items() if k not in self._train_only_metric_names}

    # ---- what a caller hands to fit / evaluate / predict ------------------------------
    def network_inputs(self, x: Any, y: Any = None) -> tuple[Any, Any]:
        """``x`` (and ``y``) as the network takes them: raw strings go through the
        network's preprocessor (``engine/inputs.py``); anything else is returned as is."""
        from adv_large_batch.engine.inputs import adapt_inputs

        return adapt_inputs(self.network, x, y)

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
        """``keras.Model.fit``; raw inputs go through ``network_inputs``; the progress line
        is the command line's short one (``engine.progress.fit_progress``)."""
        from adv_large_batch.engine.progress import fit_progress

        x, y = self.network_inputs(x, y)
        validation = kwargs.get("validation_data")
        if isinstance(validation, (tuple, list)) and len(validation) in (2, 3):
            kwargs["validation_data"] = (*self.network_inputs(*validation[:2]), *validation[2:])
        elif validation is not None:
            kwargs["validation_data"] = self.network_inputs(validation)[0]
        callbacks, verbose = fit_progress(
            self, callbacks, verbose, x, {**kwargs, "batch_size": batch_size}
        )
        self._before_fit(x, y)
        return super().fit(x, y, batch_size, epochs, verbose=verbose, callbacks=callbacks, **kwargs)

    def evaluate(self, x: Any = None, y: Any = None, *args: Any, **kwargs: Any) -> Any:
        """``keras.Model.evaluate``; raw inputs go through ``network_inputs``."""
        x, y = self.network_inputs(x, y)
        return super().evaluate(x, y, *args, **kwargs)

    def predict(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        """``keras.Model.predict``; raw inputs go through ``network_inputs``."""
        x, _ = self.network_inputs(x)
        return super().predict(x, *args, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "network": keras.saving.serialize_keras_object(self.network),
                "micro_batch_size": self.micro_batch_size,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TrainerCommon":
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


__all__ = ["FiniteMean", "TrainerCommon", "counter_dtype", "run_seed"]
