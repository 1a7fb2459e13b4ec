"""What ConAdv's two trainer shells share: its knobs, its logs, its buffer and its config.

``ConAdvMethod`` is mixed into the TensorFlow ``ConAdv`` (``conadv/trainer.py``, an
``AccumulatingTrainer``) and the JAX ``ConAdv`` (``conadv/jax_trainer.py``, a
``JaxAccumulatingTrainer``); each shell adds how a step makes and uses the adversarial
batches.  The attack itself is ``conadv/pgd.py`` (backend-neutral).  Both register as
``adv_large_batch>ConAdv``, so a saved model loads on either backend.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from adv_large_batch.conadv.config import ConAdvConfig
from adv_large_batch.conadv.inputs import check_pixel_range
from adv_large_batch.conadv.paired_keys import IMAGES

#: The adversarial logs (each a per-epoch mean) and the attribute of each one's tracker.
LOGS = {
    "clean_loss": "clean_loss_tracker",
    "adv_loss": "adv_loss_tracker",
    "adv_accuracy": "adv_accuracy_tracker",
    "perturbation_linf_px": "linf_tracker",
    "attack_overflows": "attack_overflow_tracker",
}


class ConAdvMethod:
    """ConAdv's shell-independent half (see the module docstring).

    Args:
        network: a functional model, images in ``[0, 1]`` -> logits; its
            ``SplitBatchNormalization`` layers (if any) are routed clean/adversarial.
        config: a ``ConAdvConfig`` (or its dict).
        micro_batch_size: rows per pass (the clean rows; the pass also carries as
            many adversarial rows); the per-replica batch is a multiple of it.
        backend: distributed backend (default: this process's).
        seed: seed of the PGD random starts.
        batch_size: the per-replica batch (TensorFlow: per worker without tf.distribute;
            JAX: per device); needed by ConAdv with ``staleness >= 1`` to size the buffer
            of adversarial batches.
    """

    #: The throughput unit of the progress line (``engine.progress.fit_progress``).
    throughput_unit = "img/s"

    def __init__(
        self,
        network: Any,
        config: ConAdvConfig | dict | None = None,
        micro_batch_size: int | None = None,
        backend: Any = None,
        seed: int | None = None,
        batch_size: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(  # type: ignore[call-arg]
            network, micro_batch_size=micro_batch_size, backend=backend, seed=seed, **kwargs
        )
        if isinstance(config, dict):
            config = ConAdvConfig(**config)
        self.config = config or ConAdvConfig()
        self.batch_size = batch_size
        if self.config.adversarial:
            for name, attribute in LOGS.items():
                setattr(self, attribute, self.add_tracker(name))  # type: ignore[attr-defined]
        if self.config.buffered:
            if batch_size is None:
                raise ValueError(
                    "ConAdv with staleness >= 1 needs batch_size= (the per-replica batch) to "
                    "size its buffer of adversarial batches"
                )
            self.stale_tracker = self.add_tracker("stale_fraction")  # type: ignore[attr-defined]
            shape = (self.config.staleness, batch_size, *tuple(network.input_shape[1:]))
            self.buffer_images = self.buffer_variable("adv_buffer_images", shape, "float32")
            self.buffer_labels = self.buffer_variable("adv_buffer_labels", shape[:2], "int32")
            if not self.config.shared:
                # Non-finite input-gradient entries of the last next-batch attack, folded
                # into the next step's gradients (TensorFlow's mixed_float16; 0 on JAX).
                self.buffer_overflow = self.buffer_variable("adv_buffer_overflow", (), "float32")
        # Every variable exists now (the network is built): saving and loading weights work
        # before the first call.
        self.built = network.built

    def buffer_variable(self, name: str, shape: tuple[int, ...], dtype: str) -> Any:
        """A zero non-trainable variable of this replica's own buffer (the shell's kind)."""
        raise NotImplementedError

    def call(self, inputs: Any, training: bool = False) -> Any:
        """The network on the images (of a paired element too)."""
        if isinstance(inputs, dict) and IMAGES in inputs:
            inputs = inputs[IMAGES]
        return self.network(inputs, training=training)  # type: ignore[attr-defined]

    def check_images(self, x: Any) -> None:
        """Images must be floats in ``[0, 1]`` (``inputs.check_pixel_range``)."""
        check_pixel_range(x)

    def per_worker_variables(self) -> list[Any]:
        """The buffer of this worker's (and replica's) own adversarial batches."""
        if not self.config.buffered:
            return []
        if self.config.shared:
            return [self.buffer_images, self.buffer_labels]
        return [self.buffer_images, self.buffer_labels, self.buffer_overflow]

    def get_config(self) -> dict[str, Any]:
        """Keras' config; the ``ConAdvConfig`` under ``adversarial`` (as in the run record)."""
        config = super().get_config()  # type: ignore[misc]
        config.update(
            {"adversarial": dataclasses.asdict(self.config), "batch_size": self.batch_size}
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Any:
        """Also reads a config saved before, with the ``ConAdvConfig`` under ``config``."""
        config = dict(config)
        config["config"] = config.pop("adversarial", config.get("config"))  # __init__'s name
        return super().from_config(config)  # type: ignore[misc]


__all__ = ["LOGS", "ConAdvMethod"]
