"""LARS, the layer-wise adaptive optimizer ConAdv trains ResNet/EfficientNet with
(ConAdv §4.1 "Implementation Details": "we use LARS [39] to train all the models";
You et al. 2017, "Large Batch Training of Convolutional Networks", eq. 6, in the
formulation of TF-models' and timm's LARS)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from adv_large_batch import keras_internals
from adv_large_batch.optimizers.layerwise import (
    LayerwiseOptimizer,
    _check_non_negative,
    dense_gradient,
    lars_step,
    lars_trust_ratio,
)


@keras.saving.register_keras_serializable(package="adv_large_batch")
class LARS(LayerwiseOptimizer):
    """Layer-wise Adaptive Rate Scaling: momentum SGD with a per-variable trust ratio.

    ```python
    import keras
    from adv_large_batch.optimizers import LARS

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=LARS(learning_rate=1.0, weight_decay=1e-4), loss="mse")
    model.fit(keras.ops.ones((8, 4)), keras.ops.zeros((8, 1)), verbose=0)
    ```

    For every variable ``w`` with gradient ``g`` and velocity ``v`` (zeros at start):

    ```
    r        = eta ||w|| / (||g|| + wd ||w|| + eps)      (layer adaptation)
    r        = min(max(r, trust_ratio_min), trust_ratio_max)      (optional)
    r        = 1                 where ||w|| = 0 or ||g|| = 0
    local_lr = lr_t r
    update   = g + wd w
    v        <- momentum v + local_lr update
    w        <- w - v                                   (nesterov=False)
    w        <- w - (momentum v + local_lr update)      (nesterov=True, v already new)
    ```

    ``wd = 0`` (in ``r`` and in ``update``) for variables whose path matches
    ``no_decay_patterns``, and ``r = 1`` for those matching ``no_adapt_patterns``
    (defaults: biases and BatchNorm/LayerNorm parameters, as in the LARS paper's
    practice and TF-models' ``exclude_from_layer_adaptation``).

    Args:
        learning_rate: float or ``LearningRateSchedule`` (``lr_t``, the "global" LR).
        momentum: in ``[0, 1)``.
        weight_decay: ``wd`` >= 0, applied inside the update (never also by Keras).
        eta: the trust coefficient (0.001 in the LARS paper and TF-models).
        epsilon: keeps the trust-ratio denominator positive.
        nesterov: Nesterov momentum.
        trust_ratio_min, trust_ratio_max: optional clip of ``r``; ``None`` = off.
        no_decay_patterns, no_adapt_patterns: regexes searched in ``variable.path``.
        log_trust_ratios: keep the last ``r`` and ``||delta w||`` per variable.
        **kwargs: Keras base optimizer arguments (``clipnorm``, ``name``, ...).
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1.0,
        momentum: float = 0.9,
        weight_decay: float | None = 0.0,
        eta: float = 0.001,
        epsilon: float = 1e-8,
        nesterov: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"Argument `momentum` must be in [0, 1). Received: momentum={momentum!r}"
            )
        _check_non_negative(eta, "eta")
        if eta == 0:
            raise ValueError("Argument `eta` must be > 0. Received: eta=0")
        _check_non_negative(epsilon, "epsilon")
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.momentum = float(momentum)
        self.eta = float(eta)
        self.epsilon = float(epsilon)
        self.nesterov = bool(nesterov)

    def build_slots(self, variables: Sequence[Any]) -> None:
        self._velocities = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        index = keras_internals.variable_index(self, variable)
        dtype = variable.dtype
        weight = ops.convert_to_tensor(variable)
        gradient = dense_gradient(gradient, dtype)
        decay = self._decay_rates[index]
        if self._adapt_flags[index]:
            ratio = lars_trust_ratio(
                weight,
                gradient,
                self.eta,
                decay,
                self.epsilon,
                self.trust_ratio_min,
                self.trust_ratio_max,
            )
        else:
            ratio = ops.ones((), dtype)
        velocity = self._velocities[index]
        v_t, delta = lars_step(
            gradient,
            velocity,
            weight,
            ops.cast(learning_rate, dtype) * ratio,
            self.momentum,
            decay,
            self.nesterov,
        )
        self.assign(velocity, v_t)
        self.assign_sub(variable, delta)
        self.record_diagnostics(index, ratio, delta)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "eta": self.eta,
                "epsilon": self.epsilon,
                "nesterov": self.nesterov,
            }
        )
        return config
