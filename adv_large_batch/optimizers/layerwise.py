"""Trust-ratio math and the shared Keras shell of the layer-wise adaptive optimizers
(ScaLA §3.1, "Outer Minimization via Groupwise Adaptive Learning Rates", Algorithm 1
line 13: ``x^i <- x^i - eta_t * nu(||x^i||) * u^i / ||u^i||`` with
``nu(c) = max(L, min(c, U))``; LAMB: You et al. 2019; LARS: You et al. 2017).

The math is a handful of pure functions over tensors (``keras.ops``), so it can be
tested and reused without an optimizer; ``LayerwiseOptimizer`` is the thin
``keras.optimizers.Optimizer`` shell that both ``LAMB`` and ``LARS`` share: path-based
parameter groups, in-update weight decay, trust-ratio clipping and the optional
diagnostic variables read by ``TrustRatioLogger``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import keras
from keras import ops

from adv_large_batch import keras_internals
from adv_large_batch.optimizers.gradients import densify
from adv_large_batch.optimizers.param_groups import (
    DEFAULT_NO_ADAPT_PATTERNS,
    DEFAULT_NO_DECAY_PATTERNS,
    ParameterGroup,
    compile_patterns,
    groups_from_flags,
    matches,
    variable_path,
)

Tensor = Any


def dense_gradient(gradient: Tensor, dtype: Any) -> Tensor:
    """``gradient`` as a dense tensor of ``dtype``: embedding gradients arrive as
    ``tf.IndexedSlices``, but the trust ratio needs the norm of the whole update and the
    moments decay on every row anyway."""
    return ops.cast(densify(gradient), dtype)


def l2_norm(x: Tensor) -> Tensor:
    """The Euclidean norm of all entries of ``x`` (a scalar)."""
    return ops.sqrt(ops.sum(ops.square(x)))


def clip_weight_norm(norm: Tensor, lower: float = 0.0, upper: float | None = None) -> Tensor:
    """ScaLA's ``nu(c) = max(L, min(c, U))``; ``upper=None`` means ``U = inf``."""
    if upper is not None:
        norm = ops.minimum(norm, ops.cast(upper, norm.dtype))
    if lower:
        norm = ops.maximum(norm, ops.cast(lower, norm.dtype))
    return norm


def trust_ratio(
    numerator: Tensor,
    denominator: Tensor,
    weight_norm: Tensor,
    min_ratio: float | None = None,
    max_ratio: float | None = None,
) -> Tensor:
    """``numerator / denominator`` clipped to ``[min_ratio, max_ratio]``, or exactly 1
    where ``weight_norm == 0`` or ``denominator == 0`` (fresh zero-initialised
    variables and zero updates take an unscaled step; the clip does not apply there,
    as in DeepSpeed's ``min_coeff``/``max_coeff``)."""
    valid = ops.logical_and(ops.greater(weight_norm, 0), ops.greater(denominator, 0))
    safe_denominator = ops.where(valid, denominator, ops.ones_like(denominator))
    ratio = numerator / safe_denominator
    if min_ratio is not None:
        ratio = ops.maximum(ratio, ops.cast(min_ratio, ratio.dtype))
    if max_ratio is not None:
        ratio = ops.minimum(ratio, ops.cast(max_ratio, ratio.dtype))
    return ops.where(valid, ratio, ops.ones_like(ratio))


def lamb_direction(
    gradient: Tensor,
    m: Tensor,
    v: Tensor,
    weight: Tensor,
    step: Tensor,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    bias_correction: bool = True,
    weight_decay: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """One LAMB moment update; returns ``(m_t, v_t, u_t)``.

    ``m_t = b1 m + (1 - b1) g``, ``v_t = b2 v + (1 - b2) g^2``; with bias correction
    ``m_hat = m_t / (1 - b1^t)``, ``v_hat = v_t / (1 - b2^t)`` (else the raw moments);
    ``u_t = m_hat / (sqrt(v_hat) + eps) + wd * w`` (decoupled decay, inside the trust
    ratio as in the LAMB paper). ``step`` is ``t``, counted from 1.
    """
    m = beta_1 * m + (1.0 - beta_1) * gradient
    v = beta_2 * v + (1.0 - beta_2) * ops.square(gradient)
    m_hat, v_hat = m, v
    if bias_correction:
        m_hat = m / (1.0 - ops.power(ops.cast(beta_1, step.dtype), step))
        v_hat = v / (1.0 - ops.power(ops.cast(beta_2, step.dtype), step))
    direction = m_hat / (ops.sqrt(v_hat) + epsilon)
    if weight_decay:
        direction = direction + weight_decay * weight
    return m, v, direction


def lamb_trust_ratio(
    weight: Tensor,
    direction: Tensor,
    weight_norm_lower: float = 0.0,
    weight_norm_upper: float | None = None,
    min_ratio: float | None = None,
    max_ratio: float | None = None,
) -> Tensor:
    """``nu(||w||) / ||u||``; 1 where ``||u|| = 0``, or where ``nu(||w||) = 0``, i.e.
    ``||w|| = 0`` with ``L = 0`` (the deliberate deviation from the paper, as NVIDIA's and
    DeepSpeed's LAMB: the paper's step there is 0 and a zero-initialised variable would
    never move).  With ``L > 0`` a zero weight takes the paper's step ``lr L u / ||u||``."""
    nu = clip_weight_norm(l2_norm(weight), weight_norm_lower, weight_norm_upper)
    return trust_ratio(nu, l2_norm(direction), nu, min_ratio, max_ratio)


def lars_trust_ratio(
    weight: Tensor,
    gradient: Tensor,
    eta: float,
    weight_decay: float = 0.0,
    epsilon: float = 0.0,
    min_ratio: float | None = None,
    max_ratio: float | None = None,
) -> Tensor:
    """``eta ||w|| / (||g|| + wd ||w|| + eps)`` (1 where ``||w||`` or ``||g||`` is 0)."""
    weight_norm = l2_norm(weight)
    gradient_norm = l2_norm(gradient)
    ratio = trust_ratio(
        eta * weight_norm,
        gradient_norm + weight_decay * weight_norm + epsilon,
        weight_norm,
        min_ratio,
        max_ratio,
    )
    # ``trust_ratio`` only tests its denominator, which eps keeps positive.
    return ops.where(ops.greater(gradient_norm, 0), ratio, ops.ones_like(ratio))


def lars_step(
    gradient: Tensor,
    velocity: Tensor,
    weight: Tensor,
    local_lr: Tensor,
    momentum: float,
    weight_decay: float = 0.0,
    nesterov: bool = False,
) -> tuple[Tensor, Tensor]:
    """One LARS momentum step; returns ``(v_t, delta)`` with ``w_t = w - delta``.

    ``update = g + wd w``; ``v_t = momentum v + local_lr update``;
    ``delta = v_t`` or, with Nesterov, ``momentum v_t + local_lr update``.
    """
    update = gradient + weight_decay * weight if weight_decay else gradient
    velocity = momentum * velocity + local_lr * update
    delta = momentum * velocity + local_lr * update if nesterov else velocity
    return velocity, delta


def _check_non_negative(value: float, argument: str) -> None:
    if value is None or not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(
            f"Argument `{argument}` must be a number >= 0. Received: {argument}={value!r}"
        )


class LayerwiseOptimizer(keras.optimizers.Optimizer):
    """Shared shell of ``LAMB`` and ``LARS``; not meant to be used directly.

    Subclasses implement ``build_slots(variables)`` and ``update_step`` and call
    ``self.record_diagnostics(index, ratio, delta)`` after each update.

    Weight decay is part of the layer-wise update (it enters the trust ratio), so
    Keras's own decoupled ``weight_decay`` pass (``w -= lr * wd * w`` before
    ``update_step``) is switched off here; ``weight_decay`` is still the Keras
    argument and attribute, so ``get_config`` and ``exclude_from_weight_decay``
    keep working and nothing is decayed twice.
    """

    def __init__(
        self,
        learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
        weight_decay: float | None = 0.0,
        no_decay_patterns: Iterable[str] | None = DEFAULT_NO_DECAY_PATTERNS,
        no_adapt_patterns: Iterable[str] | None = DEFAULT_NO_ADAPT_PATTERNS,
        trust_ratio_min: float | None = None,
        trust_ratio_max: float | None = None,
        log_trust_ratios: bool = False,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        if isinstance(learning_rate, float):
            _check_non_negative(learning_rate, "learning_rate")
        weight_decay = 0.0 if weight_decay is None else weight_decay
        _check_non_negative(weight_decay, "weight_decay")
        for argument, value in (
            ("trust_ratio_min", trust_ratio_min),
            ("trust_ratio_max", trust_ratio_max),
        ):
            if value is not None:
                _check_non_negative(value, argument)
        if (
            trust_ratio_min is not None
            and trust_ratio_max is not None
            and trust_ratio_min > trust_ratio_max
        ):
            raise ValueError(
                "Argument `trust_ratio_min` must be <= `trust_ratio_max`. Received: "
                f"trust_ratio_min={trust_ratio_min}, trust_ratio_max={trust_ratio_max}"
            )
        no_decay = compile_patterns(no_decay_patterns, "no_decay_patterns")
        no_adapt = compile_patterns(no_adapt_patterns, "no_adapt_patterns")
        super().__init__(
            learning_rate=learning_rate, weight_decay=float(weight_decay), name=name, **kwargs
        )
        self.no_decay_patterns = tuple(no_decay_patterns or ())
        self.no_adapt_patterns = tuple(no_adapt_patterns or ())
        self.trust_ratio_min = trust_ratio_min
        self.trust_ratio_max = trust_ratio_max
        self.log_trust_ratios = bool(log_trust_ratios)
        self._no_decay_regex = no_decay
        self._no_adapt_regex = no_adapt

    # -- parameter groups -------------------------------------------------------------

    def _flags(self, variable: Any) -> tuple[float, bool]:
        decay = (
            self.weight_decay
            if self.weight_decay
            and not matches(self._no_decay_regex, variable)
            and keras_internals.uses_weight_decay(self, variable)
            else 0.0
        )
        return float(decay), not matches(self._no_adapt_regex, variable)

    def parameter_groups(self, variables: Sequence[Any] | None = None) -> list[ParameterGroup]:
        """The effective ``(weight_decay, layer_adaptation)`` groups of ``variables``."""
        variables = keras_internals.built_variables(self) if variables is None else list(variables)
        return groups_from_flags(variables, [self._flags(v) for v in variables])

    def build(self, variables: Sequence[Any]) -> None:
        if self.built:
            return
        super().build(variables)
        flags = [self._flags(v) for v in variables]
        # Plain Python values, read while tracing ``update_step``: static branches.
        self._decay_rates = tuple(decay for decay, _ in flags)
        self._adapt_flags = tuple(adapt for _, adapt in flags)
        self.build_slots(variables)
        self._trust_ratios: list[Any] = []
        self._update_norms: list[Any] = []
        if self.log_trust_ratios:
            for variable in variables:
                stem = variable_path(variable).replace("/", "_")
                self._trust_ratios.append(
                    self.add_variable(
                        (), initializer="ones", dtype="float32", name=f"{stem}_trust_ratio"
                    )
                )
                self._update_norms.append(
                    self.add_variable(
                        (), initializer="zeros", dtype="float32", name=f"{stem}_update_norm"
                    )
                )

    def build_slots(self, variables: Sequence[Any]) -> None:
        raise NotImplementedError

    def _apply_weight_decay(self, variables: Sequence[Any]) -> None:
        # Decay is applied inside ``update_step`` (through the trust ratio); Keras's
        # separate ``w -= lr * wd * w`` pass would decay a second time.  (A private Keras
        # hook, listed in ``keras_internals.OVERRIDDEN_HOOKS``.)
        return

    # -- diagnostics -------------------------------------------------------------------

    def record_diagnostics(self, index: int, ratio: Tensor, delta: Tensor) -> None:
        """Store the last trust ratio and ``||delta w||`` of variable ``index``."""
        if self.log_trust_ratios:
            self.assign(self._trust_ratios[index], ops.cast(ratio, "float32"))
            self.assign(self._update_norms[index], ops.cast(l2_norm(delta), "float32"))

    def trust_ratio_diagnostics(self) -> dict[str, dict[str, float]]:
        """``{path: {"trust_ratio": r, "update_norm": ||delta w||}}`` of the last step."""
        if not self.log_trust_ratios:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' was built with log_trust_ratios=False; "
                "pass log_trust_ratios=True (--log-trust-ratios true) to record them."
            )
        if not self.built:
            return {}
        return {
            variable_path(v): {"trust_ratio": float(r.numpy()), "update_norm": float(n.numpy())}
            for v, r, n in zip(
                keras_internals.built_variables(self), self._trust_ratios, self._update_norms
            )
        }

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "no_decay_patterns": list(self.no_decay_patterns),
                "no_adapt_patterns": list(self.no_adapt_patterns),
                "trust_ratio_min": self.trust_ratio_min,
                "trust_ratio_max": self.trust_ratio_max,
                "log_trust_ratios": self.log_trust_ratios,
            }
        )
        return config
