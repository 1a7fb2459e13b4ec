"""Split BatchNorm: one BN for clean inputs, an auxiliary BN for adversarial ones.

ConAdv §3.2 ("we use main BatchNorm to calculate the statics of clean data and
auxiliary BatchNorm to obtain the statics of adversarial data"), following
AdvProp (Xie et al. 2020, ref. [34]) and timm's ``SplitBatchNorm2d``.

Routing is a property of the *layer*, set by the trainer for the duration of a
forward pass (``split_bn_route``), never an extra call argument, so the layer
sits in any functional model unchanged:

route   training=True                                  training=False
------  ---------------------------------------------  --------------
main    whole batch -> main BN (batch statistics)      main BN,
aux     whole batch -> auxiliary BN                    moving averages
split   rows [0, n) -> main BN, rows [n, B) -> aux BN  (always)

``n`` is ``num_clean`` when set, else ``B // 2``: one forward over
``concat([clean, adversarial])`` normalises each half with its own batch
statistics and updates each BN's own moving averages.  Inference always uses
the main BN, whatever the route.

``convert_to_split_bn`` turns every ``BatchNormalization`` of a functional
model into a ``SplitBatchNormalization`` whose two BNs both start from the
original layer's weights and statistics (timm's ``convert_splitbn_model``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import keras
from keras import ops

from adv_large_batch import keras_internals


def backend_result_type(dtype: Any) -> str:
    """BatchNorm's compute dtype: at least float32 (Keras upcasts float16/bfloat16)."""
    return keras.backend.result_type(dtype, "float32")


ROUTES = ("main", "aux", "split")

# BatchNormalization constructor arguments carried over (renorm is not supported).
_NORM_ARGS = (
    "axis",
    "momentum",
    "epsilon",
    "center",
    "scale",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
    "synchronized",
)


def split_point(batch: Any, num_clean: int | None) -> Any:
    """Rows ``[0, n)`` of a ``[clean; adversarial]`` batch are clean: ``num_clean`` or half."""
    return batch // 2 if num_clean is None else num_clean


@keras.saving.register_keras_serializable(package="adv_large_batch")
class SplitBatchNormalization(keras.layers.Layer):
    """BatchNorm with a main BN for clean rows and an auxiliary BN for adversarial rows.

    ```python
    import numpy as np
    from adv_large_batch.models.split_batchnorm import SplitBatchNormalization, split_bn_route

    layer = SplitBatchNormalization(momentum=0.9)
    clean, adv = np.random.rand(4, 3), 5 + np.random.rand(4, 3)
    with split_bn_route(layer, "split"):  # rows 0-3 -> main BN, rows 4-7 -> aux BN
        y = layer(np.concatenate([clean, adv]).astype("float32"), training=True)
    y_eval = layer(clean.astype("float32"))  # inference: main BN only
    ```

    Args: those of ``keras.layers.BatchNormalization`` (both BNs get the same),
    plus the base-layer keywords (``name``, ``dtype``, ``trainable``).

    Attributes:
        route: ``"main"`` (default), ``"aux"`` or ``"split"``; see the module docstring.
        num_clean: the split point for ``"split"`` (``None`` = half the batch).
        main_norm, aux_norm: the two ``BatchNormalization`` sublayers.
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        synchronized: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        norm_args = dict(
            axis=axis,
            momentum=momentum,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            synchronized=synchronized,
        )
        # "norm" in the sublayer names keeps gamma/beta out of weight decay and
        # LARS adaptation (optimizers.param_groups.DEFAULT_EXCLUDE_PATTERNS).
        self.main_norm = keras.layers.BatchNormalization(
            name="main_norm", dtype=self.dtype_policy, **norm_args
        )
        self.aux_norm = keras.layers.BatchNormalization(
            name="aux_norm", dtype=self.dtype_policy, **norm_args
        )
        self.route = "main"
        self.num_clean: int | None = None
        self.supports_masking = True

    def build(self, input_shape: tuple) -> None:
        # Both BNs own variables from the start (a symbolic call only reaches main_norm).
        self.main_norm.build(input_shape)
        self.aux_norm.build(input_shape)

    def call(self, inputs: Any, training: bool | None = None, mask: Any = None) -> Any:
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")
        if not training or self.route == "main":
            return self.main_norm(inputs, training=training, mask=mask)
        if self.route == "aux":
            return self.aux_norm(inputs, training=True, mask=mask)
        if mask is None and self._can_group(inputs):
            return self._grouped_split(inputs)
        n = split_point(ops.shape(inputs)[0], self.num_clean)
        clean = self.main_norm(inputs[:n], training=True, mask=None if mask is None else mask[:n])
        adversarial = self.aux_norm(
            inputs[n:], training=True, mask=None if mask is None else mask[n:]
        )
        return ops.concatenate([clean, adversarial], axis=0)

    def _can_group(self, inputs: Any) -> bool:
        """The one-op split applies: equal static halves, both BNs trainable, no sync."""
        batch = inputs.shape[0]
        norms = (self.main_norm, self.aux_norm)
        return (
            batch is not None
            and batch % 2 == 0
            and self.num_clean in (None, batch // 2)
            and all(bn.trainable and not bn.synchronized and not bn.renorm for bn in norms)
            and all(d is not None for d in inputs.shape[1:])
        )

    def _grouped_split(self, inputs: Any) -> Any:
        """The ``split`` route in one pass: ``[clean; adversarial]`` viewed as ``[2, B/2, ...]``.

        Same math as the two sublayers on the two halves (batch moments per half,
        each BN's own gamma/beta and moving averages), without slicing the input and
        concatenating the outputs, whose gradients (a zero-padded full-size tensor per
        slice) cost about a third of a ConAdv update on a small ResNet.
        """
        main, aux = self.main_norm, self.aux_norm
        shape = tuple(inputs.shape)
        rank = len(shape)
        axis = main.axis % rank
        x = ops.cast(inputs, backend_result_type(inputs.dtype))
        grouped = ops.reshape(x, (2, shape[0] // 2, *shape[1:]))
        axes = [1 + a for a in range(rank) if a != axis]
        mean, variance = ops.moments(grouped, axes=axes, keepdims=True)
        params_shape = [2] + [1] * rank
        params_shape[1 + axis] = shape[axis]

        def stacked(name: str, default: float) -> Any:
            values = [
                ops.cast(getattr(bn, name), x.dtype)
                if getattr(bn, name, None) is not None
                else ops.full((shape[axis],), default, x.dtype)
                for bn in (main, aux)
            ]
            return ops.reshape(ops.stack(values), params_shape)

        for i, bn in enumerate((main, aux)):
            m = ops.reshape(mean[i], (shape[axis],))
            v = ops.reshape(variance[i], (shape[axis],))
            bn.moving_mean.assign(
                ops.cast(bn.moving_mean, x.dtype) * bn.momentum + m * (1.0 - bn.momentum)
            )
            bn.moving_variance.assign(
                ops.cast(bn.moving_variance, x.dtype) * bn.momentum + v * (1.0 - bn.momentum)
            )
        inv = ops.rsqrt(variance + main.epsilon) * stacked("gamma", 1.0)
        out = grouped * inv + (stacked("beta", 0.0) - mean * inv)
        return ops.cast(ops.reshape(out, shape), self.compute_dtype)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        norm = self.main_norm.get_config()
        config.update({k: norm[k] for k in _NORM_ARGS})
        return config

    @classmethod
    def from_batch_normalization(
        cls, layer: keras.layers.BatchNormalization
    ) -> "SplitBatchNormalization":
        """A split layer with ``layer``'s configuration and name (weights are not copied)."""
        config = layer.get_config()
        if config.get("renorm"):
            raise ValueError(f"{layer.name}: BatchNormalization with renorm=True cannot be split")
        kwargs = {k: config[k] for k in _NORM_ARGS}
        return cls(name=layer.name, dtype=layer.dtype_policy, trainable=layer.trainable, **kwargs)


def split_bn_layers(model: keras.layers.Layer) -> list[SplitBatchNormalization]:
    """Every ``SplitBatchNormalization`` in ``model`` (nested models included)."""
    return [
        layer
        for layer in keras_internals.flatten_layers(model, include_self=True, recursive=True)
        if isinstance(layer, SplitBatchNormalization)
    ]


@contextlib.contextmanager
def split_bn_route(
    model: keras.layers.Layer, route: str, num_clean: int | None = None
) -> Iterator[None]:
    """Set ``route`` (and ``num_clean``) on every split BN of ``model``, restore on exit.

    A no-op for models without split BN.  Inside ``tf.function`` the route in
    force while the forward pass is *traced* is the one the graph keeps.
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    layers = split_bn_layers(model)
    saved = [(layer.route, layer.num_clean) for layer in layers]
    for layer in layers:
        layer.route, layer.num_clean = route, num_clean
    try:
        yield
    finally:
        for layer, (old_route, old_num_clean) in zip(layers, saved):
            layer.route, layer.num_clean = old_route, old_num_clean


def _copy_weights(source: keras.layers.Layer, target: keras.layers.Layer) -> None:
    if isinstance(target, SplitBatchNormalization) and not isinstance(
        source, SplitBatchNormalization
    ):
        target.main_norm.set_weights(source.get_weights())
        target.aux_norm.set_weights(source.get_weights())
    elif hasattr(source, "layers") and hasattr(target, "layers"):  # nested model
        for s, t in zip(source.layers, target.layers):
            _copy_weights(s, t)
    else:
        target.set_weights(source.get_weights())


def convert_to_split_bn(model: keras.Model) -> keras.Model:
    """A copy of functional/Sequential ``model`` with every BN replaced by a split BN.

    Both BNs of each split layer start with the original layer's gamma, beta and
    moving statistics; every other layer keeps its weights.  The original model
    is left untouched.
    """

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, keras.layers.BatchNormalization):
            return SplitBatchNormalization.from_batch_normalization(layer)
        return layer.__class__.from_config(layer.get_config())

    converted = keras.models.clone_model(model, clone_function=clone, recursive=True)
    for source, target in zip(model.layers, converted.layers):
        _copy_weights(source, target)
    return converted


__all__ = [
    "ROUTES",
    "SplitBatchNormalization",
    "convert_to_split_bn",
    "split_bn_layers",
    "split_bn_route",
    "split_point",
]
