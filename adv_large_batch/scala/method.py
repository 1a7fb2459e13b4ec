"""What ScaLA's two trainer shells share: its knobs, t_s, its logs and its config.

``ScaLAMethod`` is mixed into the TensorFlow ``ScaLA`` (``scala/trainer.py``, an
``AccumulatingTrainer``) and the JAX ``ScaLA`` (``scala/jax_trainer.py``, a
``JaxAccumulatingTrainer``); each shell adds only how a micro-batch's loss is
differentiated.  The adversarial term itself is ``scala/objective.py``.  Both register
as ``adv_large_batch>ScaLA``, so a saved model loads on either backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import keras

from adv_large_batch.engine.trainer_common import counter_dtype
from adv_large_batch.scala.config import ScaLAConfig
from adv_large_batch.scala.injection import DelayedInjection

#: The per-micro-batch logs of ScaLA (each a mean over the micro-batches of an epoch),
#: and the attribute of each one's tracker (the names checkpoints were written with).
LOGS = {
    "task_loss": "task_loss_tracker",
    "regulariser": "reg_tracker",
    "regulariser_y0": "reg_start_tracker",
    "perturbation_linf": "linf_tracker",
    "perturbation_l2": "l2_tracker",
    "adv_on": "adv_on_tracker",
}


class ScaLAMethod:
    """ScaLA's shell-independent half (see the module docstring).

    Args:
        network: a ``PerturbableBertClassifier`` (or RoBERTa).
        config: a ``ScaLAConfig``; ``method="baseline"`` trains without perturbation.
        micro_batch_size: rows per pass; the per-worker batch is a multiple of it.
        backend: distributed backend (default: this process's).
        seed: the run seed of the random starts and dropout masks.
        steps_per_epoch: steps of one epoch of the run, for t_s given in epochs
            (``DelayedInjection``); default: each ``fit``'s own ``steps``.
    """

    def __init__(
        self,
        network: Any,
        config: ScaLAConfig | dict | None = None,
        micro_batch_size: int | None = None,
        backend: Any = None,
        seed: int | None = None,
        steps_per_epoch: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
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
            start, dtype=counter_dtype(), trainable=False, name="adv_start_step"
        )
        for name, attribute in LOGS.items():
            setattr(self, attribute, self.add_tracker(name))  # type: ignore[attr-defined]

    def scala_trackers(self) -> dict[str, Any]:
        """``{log name: tracker}`` of ``LOGS``."""
        return {name: getattr(self, attribute) for name, attribute in LOGS.items()}

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
        return super().fit(x, y, batch_size, epochs, verbose, callbacks, **kwargs)  # type: ignore[misc]

    def get_config(self) -> dict[str, Any]:
        """Keras' config; the ``ScaLAConfig`` under ``adversarial`` (as in the run record)."""
        config = super().get_config()  # type: ignore[misc]
        config["adversarial"] = dataclasses.asdict(self.config)
        config["steps_per_epoch"] = self.steps_per_epoch
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Also reads a config saved before, with the ``ScaLAConfig`` under ``config``.

        Registers the perturbable text classifiers first (``register_networks``), so
        ``keras.models.load_model`` needs no ``custom_objects`` for the network.
        """
        cls.register_networks()
        config = dict(config)
        config["config"] = config.pop("adversarial", config.get("config"))  # __init__'s name
        return super().from_config(config)  # type: ignore[misc]

    @staticmethod
    def register_networks() -> None:
        """Import the networks ScaLA trains (BERT-family and RoBERTa classifiers), which
        registers them with Keras' serialization (imported here, not at module level:
        they pull in keras-hub)."""
        import adv_large_batch.models.perturbable_bert  # noqa: F401
        import adv_large_batch.models.perturbable_roberta  # noqa: F401


__all__ = ["LOGS", "ScaLAMethod"]
