"""LAMB with ScaLA's clipped trust ratio (ScaLA §3.1, "Outer Minimization via Groupwise
Adaptive Learning Rates", Algorithm 1 line 13 and appendix B; You et al. 2019,
"Large Batch Optimization for Deep Learning: Training BERT in 76 minutes", Alg. 2)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from adv_large_batch import keras_internals
from adv_large_batch.optimizers.layerwise import (
    LayerwiseOptimizer,
    _check_non_negative,
    dense_gradient,
    lamb_direction,
    lamb_trust_ratio,
)


@keras.saving.register_keras_serializable(package="adv_large_batch")
class LAMB(LayerwiseOptimizer):
    """Layer-wise Adaptive Moments for Batch training, with ScaLA's weight-norm clip.

    ```python
    import keras
    from adv_large_batch.optimizers import LAMB

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=LAMB(learning_rate=1e-3, weight_decay=0.01), loss="mse")
    model.fit(keras.ops.ones((8, 4)), keras.ops.zeros((8, 1)), verbose=0)
    ```

    For every variable ``w`` (one "layer" ``i`` of the paper) and step ``t >= 1``:

    ```
    m_t = b1 m_{t-1} + (1 - b1) g            v_t = b2 v_{t-1} + (1 - b2) g^2
    m_hat = m_t / (1 - b1^t)                 v_hat = v_t / (1 - b2^t)   (bias_correction)
    u_t = m_hat / (sqrt(v_hat) + eps) + wd w                            (decoupled decay)
    r_t = nu(||w||) / ||u_t||,  nu(c) = max(L, min(c, U))               (ScaLA's clip)
    r_t = min(max(r_t, trust_ratio_min), trust_ratio_max)               (optional)
    r_t = 1                     where ||u_t|| = 0, or ||w|| = 0 with L = 0
    w  <- w - lr_t r_t u_t
    ```

    ``wd = 0`` for variables whose path matches ``no_decay_patterns`` and ``r_t = 1``
    for those matching ``no_adapt_patterns`` (defaults: biases and LayerNorm/BatchNorm
    parameters; see ``param_groups``). With ``weight_decay=0``, ``weight_norm_upper=None``
    and ``no_adapt_patterns=()`` this is exactly ``keras.optimizers.Lamb``.

    Args:
        learning_rate: float or ``LearningRateSchedule`` (``lr_t``).
        beta_1, beta_2: moment decay rates in ``[0, 1)``.
        epsilon: added to ``sqrt(v_hat)``; 1e-6 as in the LAMB paper and BERT.
        bias_correction: divide the moments by ``1 - b^t`` (NVIDIA/DeepSpeed LAMB do;
            the original TF BERT LAMB does not).
        weight_decay: ``wd`` >= 0, applied inside the update (never also by Keras).
        weight_norm_lower, weight_norm_upper: ScaLA's ``L`` and ``U`` (0 and 10);
            ``weight_norm_upper=None`` means no upper clip.
        trust_ratio_min, trust_ratio_max: optional clip of ``r_t`` itself
            (DeepSpeed's ``min_coeff``/``max_coeff``); ``None`` = off.
        no_decay_patterns, no_adapt_patterns: regexes searched in ``variable.path``.
        log_trust_ratios: keep the last ``r_t`` and ``||delta w||`` per variable in
            non-trainable variables (read by ``TrustRatioLogger``).
        **kwargs: Keras base optimizer arguments (``clipnorm``, ``name``, ...).
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-6,
        bias_correction: bool = True,
        weight_decay: float | None = 0.0,
        weight_norm_lower: float = 0.0,
        weight_norm_upper: float | None = 10.0,
        **kwargs: Any,
    ) -> None:
        for argument, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(
                    f"Argument `{argument}` must be in [0, 1). Received: {argument}={value!r}"
                )
        _check_non_negative(epsilon, "epsilon")
        _check_non_negative(weight_norm_lower, "weight_norm_lower")
        if weight_norm_upper is not None:
            _check_non_negative(weight_norm_upper, "weight_norm_upper")
            if math.isinf(weight_norm_upper):
                weight_norm_upper = None
            elif weight_norm_lower > weight_norm_upper:
                raise ValueError(
                    "Argument `weight_norm_lower` (L) must be <= `weight_norm_upper` (U). "
                    f"Received: weight_norm_lower={weight_norm_lower}, "
                    f"weight_norm_upper={weight_norm_upper}"
                )
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.bias_correction = bool(bias_correction)
        self.weight_norm_lower = float(weight_norm_lower)
        self.weight_norm_upper = None if weight_norm_upper is None else float(weight_norm_upper)

    def build_slots(self, variables: Sequence[Any]) -> None:
        self._momentums, self._velocities = self.add_optimizer_variables(
            variables, ["momentum", "velocity"]
        )

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        index = keras_internals.variable_index(self, variable)
        dtype = variable.dtype
        m, v = self._momentums[index], self._velocities[index]
        weight = ops.convert_to_tensor(variable)
        m_t, v_t, direction = lamb_direction(
            dense_gradient(gradient, dtype),
            m,
            v,
            weight,
            step=ops.cast(self.iterations + 1, dtype),
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            bias_correction=self.bias_correction,
            weight_decay=self._decay_rates[index],
        )
        if self._adapt_flags[index]:
            ratio = lamb_trust_ratio(
                weight,
                direction,
                self.weight_norm_lower,
                self.weight_norm_upper,
                self.trust_ratio_min,
                self.trust_ratio_max,
            )
        else:
            ratio = ops.ones((), dtype)
        delta = ops.cast(learning_rate, dtype) * ratio * direction
        self.assign(m, m_t)
        self.assign(v, v_t)
        self.assign_sub(variable, delta)
        self.record_diagnostics(index, ratio, delta)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "bias_correction": self.bias_correction,
                "weight_norm_lower": self.weight_norm_lower,
                "weight_norm_upper": self.weight_norm_upper,
            }
        )
        return config
