"""ResNets with split BatchNorm (``models/image_models.py`` is the one image-model factory).

ConAdv §4.1 trains ResNet-50 (v1.5, the MLPerf reference: the stride of a
down-sampling bottleneck sits on its 3x3 convolution) and EfficientNet with
split BN (§3.2).  Written plainly, channels-last:

* ``resnet(depth)`` - ImageNet ResNet-18/34 (basic blocks) and -50/101
  (bottlenecks): 7x7/2 stem, 3x3/2 max-pool, four stages, global average pool.
  Inputs of at least 32x32 (five halvings).
* ``cifar_resnet(depth, width)`` - He et al. §4.2's CIFAR ResNet-(6n+2): a 3x3
  stem, three stages of n basic blocks with ``width, 2 width, 4 width``
  filters, strides 1, 2, 2; for 28-32 px inputs (at least 8x8).

Every normalisation is a ``SplitBatchNormalization`` (or a plain
``BatchNormalization`` with ``split_bn=False``), momentum 0.9, epsilon 1e-5; the
last BN of each residual branch starts at gamma = 0 (Goyal et al., the usual
large-batch recipe).  Layer names contain ``norm`` so the optimizers' default
patterns exempt their gamma/beta from weight decay and LARS adaptation.  The
logits layer computes in float32 under a mixed-precision policy.
"""

from __future__ import annotations

from typing import Any

import keras

from adv_large_batch.models.inputs import check_image_shape
from adv_large_batch.models.split_batchnorm import SplitBatchNormalization

IMAGENET_STAGES = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5
#: The ImageNet ResNets' training resolution (He et al.; MLPerf ResNet-50).
RESNET_IMAGE_SIZE = 224
#: The smallest input side: five halvings (ImageNet ResNets), three (CIFAR ResNets).
RESNET_MIN_SIZE, CIFAR_RESNET_MIN_SIZE = 32, 8


def norm_layer(split_bn: bool, name: str, zero_gamma: bool = False) -> keras.layers.Layer:
    """A (split) BatchNorm with the ResNet settings."""
    kwargs: dict[str, Any] = {
        "momentum": BN_MOMENTUM,
        "epsilon": BN_EPSILON,
        "gamma_initializer": "zeros" if zero_gamma else "ones",
        "name": name,
    }
    if split_bn:
        return SplitBatchNormalization(**kwargs)
    return keras.layers.BatchNormalization(**kwargs)


def conv(filters: int, kernel: int, stride: int, name: str) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        name=name,
    )


def shortcut(x: Any, filters: int, stride: int, split_bn: bool, name: str) -> Any:
    """Identity, or a 1x1 projection + BN when the shape changes."""
    if stride == 1 and x.shape[-1] == filters:
        return x
    x = conv(filters, 1, stride, f"{name}_proj_conv")(x)
    return norm_layer(split_bn, f"{name}_proj_norm")(x)


def basic_block(x: Any, filters: int, stride: int, split_bn: bool, name: str) -> Any:
    """3x3 -> 3x3 residual block (ResNet-18/34, CIFAR ResNets)."""
    skip = shortcut(x, filters, stride, split_bn, name)
    x = conv(filters, 3, stride, f"{name}_conv1")(x)
    x = norm_layer(split_bn, f"{name}_norm1")(x)
    x = keras.layers.ReLU(name=f"{name}_relu1")(x)
    x = conv(filters, 3, 1, f"{name}_conv2")(x)
    x = norm_layer(split_bn, f"{name}_norm2", zero_gamma=True)(x)
    x = keras.layers.Add(name=f"{name}_add")([skip, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def bottleneck_block(x: Any, filters: int, stride: int, split_bn: bool, name: str) -> Any:
    """1x1 -> 3x3 (stride here: v1.5) -> 1x1 x4 residual block (ResNet-50/101)."""
    skip = shortcut(x, 4 * filters, stride, split_bn, name)
    x = conv(filters, 1, 1, f"{name}_conv1")(x)
    x = norm_layer(split_bn, f"{name}_norm1")(x)
    x = keras.layers.ReLU(name=f"{name}_relu1")(x)
    x = conv(filters, 3, stride, f"{name}_conv2")(x)
    x = norm_layer(split_bn, f"{name}_norm2")(x)
    x = keras.layers.ReLU(name=f"{name}_relu2")(x)
    x = conv(4 * filters, 1, 1, f"{name}_conv3")(x)
    x = norm_layer(split_bn, f"{name}_norm3", zero_gamma=True)(x)
    x = keras.layers.Add(name=f"{name}_add")([skip, x])
    return keras.layers.ReLU(name=f"{name}_out")(x)


def classifier_head(x: Any, num_classes: int) -> Any:
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.layers.Dense(num_classes, dtype="float32", name="logits")(x)


def resnet(
    depth: int,
    input_shape: tuple[int, ...],
    num_classes: int,
    split_bn: bool = True,
) -> keras.Model:
    """ImageNet ResNet-``depth`` (18, 34, 50 or 101) returning logits.

    ```python
    import numpy as np
    from adv_large_batch.models.resnet import resnet

    model = resnet(18, (32, 32, 3), num_classes=10)   # ImageNet: resnet(50, (224, 224, 3), 1000)
    logits = model(np.random.rand(2, 32, 32, 3).astype("float32"))   # (2, 10)
    ```
    """
    if depth not in IMAGENET_STAGES:
        raise ValueError(f"ResNet depth must be one of {sorted(IMAGENET_STAGES)}, got {depth}")
    check_image_shape(f"resnet{depth}", tuple(input_shape), RESNET_MIN_SIZE)
    kind, blocks = IMAGENET_STAGES[depth]
    block = basic_block if kind == "basic" else bottleneck_block
    inputs = keras.Input(shape=input_shape, name="images")
    x = conv(64, 7, 2, "stem_conv")(inputs)
    x = norm_layer(split_bn, "stem_norm")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for stage, count in enumerate(blocks):
        filters = 64 * 2**stage
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            x = block(x, filters, stride, split_bn, f"stage{stage + 1}_block{i + 1}")
    return keras.Model(inputs, classifier_head(x, num_classes), name=f"resnet{depth}")


def cifar_resnet(
    depth: int,
    input_shape: tuple[int, ...],
    num_classes: int,
    width: int = 16,
    split_bn: bool = True,
) -> keras.Model:
    """He et al.'s CIFAR ResNet-``depth`` (depth = 6n + 2) with base ``width``, logits out.

    ```python
    from adv_large_batch.models.resnet import cifar_resnet

    model = cifar_resnet(20, (28, 28, 1), num_classes=10, width=16)   # 0.27M weights
    ```
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 >= 8, got {depth}")
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    check_image_shape(f"cifar_resnet{depth}", tuple(input_shape), CIFAR_RESNET_MIN_SIZE)
    n = (depth - 2) // 6
    inputs = keras.Input(shape=input_shape, name="images")
    x = conv(width, 3, 1, "stem_conv")(inputs)
    x = norm_layer(split_bn, "stem_norm")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for stage in range(3):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            x = basic_block(x, width * 2**stage, stride, split_bn, f"stage{stage + 1}_block{i + 1}")
    return keras.Model(inputs, classifier_head(x, num_classes), name=f"cifar_resnet{depth}")


__all__ = [
    "CIFAR_RESNET_MIN_SIZE",
    "RESNET_IMAGE_SIZE",
    "RESNET_MIN_SIZE",
    "basic_block",
    "bottleneck_block",
    "cifar_resnet",
    "resnet",
]
