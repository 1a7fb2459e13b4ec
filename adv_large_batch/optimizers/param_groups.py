"""Parameter groups by variable path: which variables get weight decay and which get
layer-wise adaptation (ScaLA §3.1, "Outer Minimization via Groupwise Adaptive Learning
Rates": the groups *i* of ``x^i``; LAMB and LARS practice excludes biases and
normalisation parameters).

Keras 3's own ``Optimizer.exclude_from_weight_decay(var_names=...)`` matches the
*short* variable name (``gamma``, ``bias``), so it cannot tell a LayerNorm ``gamma``
from any other ``gamma`` and it knows nothing about layer adaptation. Here the
regular expressions are searched (``re.search``) in ``variable.path`` instead, e.g.
``transformer_layer_0/self_attention_layer_norm/gamma`` for keras-hub BERT or
``sequential/batch_normalization/beta`` for a Keras ``BatchNormalization``.

The groups are built explicitly (``parameter_groups``) and can be printed
(``describe_parameter_groups``), like timm's ``param_groups_weight_decay``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import keras

from adv_large_batch import keras_internals

#: Path patterns excluded from weight decay and from layer adaptation by default:
#: biases (a path component that is exactly ``bias``) and the ``gamma``/``beta``/
#: ``scale`` of normalisation layers (a parent component containing ``norm``, as in
#: ``layer_norm``, ``layernorm``, ``batch_normalization``, ``group_normalization``,
#: ``rms_norm``; or named ``ln``/``*_ln``/``ln_*``, GPT-2 style). Checked against a
#: real keras-hub ``BertBackbone`` and Keras BatchNorm/LayerNorm in the tests; a Dense
#: or EinsumDense ``kernel`` and the embeddings are *not* excluded.
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = (
    r"(^|/)bias$",
    r"norm[^/]*/(gamma|beta|scale)$",
    r"(^|[/_])ln(_[^/]*)?/(gamma|beta|scale)$",
)
DEFAULT_NO_DECAY_PATTERNS: tuple[str, ...] = DEFAULT_EXCLUDE_PATTERNS
DEFAULT_NO_ADAPT_PATTERNS: tuple[str, ...] = DEFAULT_EXCLUDE_PATTERNS


def compile_patterns(patterns: Iterable[str] | None, argument: str) -> re.Pattern[str] | None:
    """One compiled alternation of ``patterns`` (``None`` if there are none).

    Raises ``ValueError`` naming ``argument`` and the offending pattern if one of them
    is not a valid regular expression (or not a string).
    """
    if patterns is None:
        return None
    if isinstance(patterns, str):
        raise TypeError(
            f"Argument `{argument}` must be a list of regular expressions, not a single "
            f"string. Received: {argument}={patterns!r}"
        )
    patterns = tuple(patterns)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(
                f"Argument `{argument}` must contain strings (regular expressions). "
                f"Received: {pattern!r} in {argument}={list(patterns)!r}"
            )
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"Argument `{argument}` contains {pattern!r}, which is not a valid "
                f"regular expression ({error})."
            ) from None
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns))


def variable_path(variable: Any) -> str:
    """``variable.path`` for a Keras variable, else its name without the ``:0`` suffix."""
    path = getattr(variable, "path", None)
    if path:
        return str(path)
    return str(getattr(variable, "name", variable)).removesuffix(":0")


def matches(pattern: re.Pattern[str] | None, variable: Any) -> bool:
    """Whether the compiled ``pattern`` is found in the path of ``variable``."""
    return pattern is not None and pattern.search(variable_path(variable)) is not None


@dataclasses.dataclass(frozen=True)
class ParameterGroup:
    """Variables that share a weight-decay rate and a layer-adaptation switch."""

    weight_decay: float
    layer_adaptation: bool
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def num_weights(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)


def parameter_groups(
    variables: Sequence[Any],
    weight_decay: float,
    no_decay_patterns: Iterable[str] | None = DEFAULT_NO_DECAY_PATTERNS,
    no_adapt_patterns: Iterable[str] | None = DEFAULT_NO_ADAPT_PATTERNS,
    layer_adaptation: bool = True,
) -> list[ParameterGroup]:
    """Split ``variables`` into (at most four) groups by decay and adaptation.

    A variable gets ``weight_decay`` unless its path matches ``no_decay_patterns``
    (or ``weight_decay`` is 0), and layer adaptation (when ``layer_adaptation``) unless
    its path matches ``no_adapt_patterns``. Groups keep the order of first appearance.
    """
    no_decay = compile_patterns(no_decay_patterns, "no_decay_patterns")
    no_adapt = compile_patterns(no_adapt_patterns, "no_adapt_patterns")
    flags = [
        (
            float(weight_decay) if weight_decay and not matches(no_decay, v) else 0.0,
            bool(layer_adaptation) and not matches(no_adapt, v),
        )
        for v in variables
    ]
    return groups_from_flags(variables, flags)


def groups_from_flags(
    variables: Sequence[Any], flags: Sequence[tuple[float, bool]]
) -> list[ParameterGroup]:
    """Group ``variables`` by their ``(weight_decay, layer_adaptation)`` flags."""
    members: dict[tuple[float, bool], list[Any]] = {}
    for variable, key in zip(variables, flags):
        members.setdefault(key, []).append(variable)
    return [
        ParameterGroup(
            weight_decay=decay,
            layer_adaptation=adapt,
            paths=tuple(variable_path(v) for v in group),
            shapes=tuple(tuple(int(d) for d in v.shape) for v in group),
        )
        for (decay, adapt), group in members.items()
    ]


def effective_parameter_groups(
    optimizer: keras.optimizers.Optimizer, variables: Sequence[Any]
) -> list[ParameterGroup]:
    """The (weight decay, layer adaptation) groups ``optimizer`` applies to ``variables``
    (a ``LossScaleOptimizer``'s inner optimizer's)."""
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    variables = list(variables)
    if hasattr(optimizer, "parameter_groups"):
        return optimizer.parameter_groups(variables)
    rate = float(optimizer.weight_decay or 0.0)
    flags = [
        (rate if rate and keras_internals.uses_weight_decay(optimizer, v) else 0.0, False)
        for v in variables
    ]
    return groups_from_flags(variables, flags)


def describe_parameter_groups(
    optimizer: keras.optimizers.Optimizer, variables: Sequence[Any] | None = None
) -> str:
    """A printable table of the effective parameter groups of ``optimizer``.

    ``variables`` defaults to the variables the optimizer was built with. Works for
    ``LAMB``/``LARS`` (decay and adaptation per variable) and for any Keras optimizer
    (decay only, from ``weight_decay`` and ``exclude_from_weight_decay``).
    """
    if variables is None:
        if not optimizer.built:
            raise ValueError(
                "describe_parameter_groups() needs `variables` when the optimizer is not "
                "built yet; pass model.trainable_variables."
            )
        variables = keras_internals.built_variables(optimizer)
    groups = effective_parameter_groups(optimizer, variables)
    total = sum(g.num_weights for g in groups)
    header = (
        f"{type(optimizer).__name__} '{optimizer.name}': {len(variables)} variables, "
        f"{total:,} weights in {len(groups)} parameter groups"
    )
    lines = [header]
    for index, group in enumerate(groups):
        lines.append(
            f"  group {index}: weight_decay={group.weight_decay:g} "
            f"layer_adaptation={group.layer_adaptation} "
            f"({len(group.paths)} variables, {group.num_weights:,} weights)"
        )
        lines.extend(f"    {path} {shape}" for path, shape in zip(group.paths, group.shapes))
    return "\n".join(lines)


class PathWeightDecayMixin:
    """Makes a stock Keras optimizer skip weight decay for variables matched by path.

    Mixed in front of ``keras.optimizers.AdamW``/``SGD`` so that ``--no-decay-pattern``
    means the same thing for every optimizer the factory builds. The matched
    variables are handed to Keras's public ``exclude_from_weight_decay(var_list=...)``
    at build time, together with whatever the user excluded there before.
    """

    def __init__(
        self,
        *args: Any,
        no_decay_patterns: Iterable[str] | None = DEFAULT_NO_DECAY_PATTERNS,
        **kwargs: Any,
    ) -> None:
        compiled = compile_patterns(no_decay_patterns, "no_decay_patterns")
        super().__init__(*args, **kwargs)
        self.no_decay_patterns = tuple(no_decay_patterns or ())
        self._no_decay_regex = compiled

    def build(self, variables: Sequence[Any]) -> None:
        if not self.built:
            excluded = [
                v
                for v in variables
                if matches(self._no_decay_regex, v)
                or not keras_internals.uses_weight_decay(self, v)
            ]
            self.exclude_from_weight_decay(var_list=excluded)
        super().build(variables)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["no_decay_patterns"] = list(self.no_decay_patterns)
        return config


@keras.saving.register_keras_serializable(package="adv_large_batch")
class PathDecayAdamW(PathWeightDecayMixin, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` whose weight-decay exclusions match variable paths.

    ```python
    import keras
    from adv_large_batch.optimizers import PathDecayAdamW

    opt = PathDecayAdamW(learning_rate=1e-3, weight_decay=0.01)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    opt.build(model.trainable_variables)  # dense/bias gets no decay
    ```
    """


@keras.saving.register_keras_serializable(package="adv_large_batch")
class PathDecaySGD(PathWeightDecayMixin, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` whose weight-decay exclusions match variable paths.

    ```python
    import keras
    from adv_large_batch.optimizers import PathDecaySGD

    opt = PathDecaySGD(learning_rate=0.1, momentum=0.9, weight_decay=1e-4)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=opt, loss="mse")  # no decay on dense/bias
    model.fit(keras.ops.ones((8, 4)), keras.ops.zeros((8, 2)), verbose=0)
    ```
    """
