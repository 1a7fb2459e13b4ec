"""TensorBoard diagnostics of the layer-wise adaptive optimizers: the last trust ratio
``r`` and update norm ``||delta w||`` per variable (ScaLA §3.1, "Outer Minimization via
Groupwise Adaptive Learning Rates": ``eta_t nu(||x^i||) / ||u^i||`` per group ``i``).

The optimizer records them when built with ``log_trust_ratios=True`` (non-trainable
variables updated inside ``update_step``, so they also work under ``tf.distribute``);
``TrustRatioLogger`` copies them to ``tf.summary`` at the end of every epoch.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


class TrustRatioLogger(keras.callbacks.Callback):
    """Writes the per-variable trust ratios and update norms to TensorBoard.

    ```python
    import keras
    from adv_large_batch.optimizers import LAMB, TrustRatioLogger

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=LAMB(1e-3, log_trust_ratios=True), loss="mse")
    model.fit(keras.ops.ones((8, 4)), keras.ops.zeros((8, 1)), verbose=0,
              callbacks=[TrustRatioLogger("/tmp/logs/trust")])
    ```

    Scalars ``trust_ratio/<variable path>`` and ``update_norm/<variable path>`` are
    written with ``step=epoch``, plus a histogram ``trust_ratio/all`` over variables.

    Args:
        logdir: the event-file directory (e.g. next to Keras's TensorBoard logs).
        histogram: also write the ``trust_ratio/all`` histogram.
    """

    def __init__(self, logdir: str, histogram: bool = True) -> None:
        super().__init__()
        self.logdir = str(logdir)
        self.histogram = bool(histogram)
        self._writer: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        optimizer = self.model.optimizer
        if not getattr(optimizer, "log_trust_ratios", False):
            raise ValueError(
                f"TrustRatioLogger needs an optimizer built with log_trust_ratios=True "
                f"(LAMB or LARS, --log-trust-ratios true); got {type(optimizer).__name__} "
                f"'{getattr(optimizer, 'name', optimizer)}'."
            )
        if self._writer is None:
            import tensorflow as tf  # TensorBoard's writer (the TensorFlow backend)

            self._writer = tf.summary.create_file_writer(self.logdir)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        import tensorflow as tf

        diagnostics = self.model.optimizer.trust_ratio_diagnostics()
        with self._writer.as_default():
            for path, values in diagnostics.items():
                tf.summary.scalar(f"trust_ratio/{path}", values["trust_ratio"], step=epoch)
                tf.summary.scalar(f"update_norm/{path}", values["update_norm"], step=epoch)
            if self.histogram and diagnostics:
                ratios = np.array([v["trust_ratio"] for v in diagnostics.values()], np.float32)
                tf.summary.histogram("trust_ratio/all", ratios, step=epoch)
        self._writer.flush()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def get_config(self) -> dict[str, Any]:
        return {"logdir": self.logdir, "histogram": self.histogram}
