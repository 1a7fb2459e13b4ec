"""EfficientNet-B0/B2 with split BatchNorm, from ``keras.applications``.

ConAdv §4.1 trains EfficientNet-B2 (Table 2) with split BN (§3.2).  The
architecture is Keras' own ``EfficientNetB0`` / ``EfficientNetB2``
(``weights=None``: nothing is downloaded), channels-last, whose
``BatchNormalization`` layers ``convert_to_split_bn`` turns into
``SplitBatchNormalization`` layers.

Keras' EfficientNet (v1) always starts with ``Rescaling(1/255)`` and an
(un-adapted, identity) ``Normalization``: it expects pixels in ``[0, 255]``.
This project's pipelines give ``[0, 1]``, so a ``Rescaling(255)`` is put in
front; the classifier returns logits (``classifier_activation=None``), cast to
float32 under a mixed-precision policy.  Inputs of at least 32x32.
"""

from __future__ import annotations

import keras

from adv_large_batch.models.inputs import check_image_shape
from adv_large_batch.models.split_batchnorm import convert_to_split_bn

VARIANTS = {"b0": keras.applications.EfficientNetB0, "b2": keras.applications.EfficientNetB2}
#: Each variant's resolution: keras.applications' ``default_size`` (the EfficientNet
#: paper's B0 224, B2 260), the default ``--image-size`` on ImageNet-scale data.
DEFAULT_SIZES = {"b0": 224, "b2": 260}
MIN_SIZE = 32  # five halvings


def efficientnet(
    variant: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    split_bn: bool = True,
) -> keras.Model:
    """EfficientNet-``variant`` ("b0" or "b2"), ``[0, 1]`` images in, logits out.

    ```python
    from adv_large_batch.models.efficientnet import efficientnet

    model = efficientnet("b0", (32, 32, 3), num_classes=10)   # split BN, random weights
    ```
    """
    if variant not in VARIANTS:
        raise ValueError(f"EfficientNet variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    check_image_shape(f"efficientnet_{variant}", tuple(input_shape), MIN_SIZE)
    inputs = keras.Input(shape=input_shape, name="images")
    pixels = keras.layers.Rescaling(255.0, name="to_pixels")(inputs)
    base = VARIANTS[variant](
        include_top=True,
        weights=None,
        input_tensor=pixels,
        classes=num_classes,
        classifier_activation=None,
        name=f"efficientnet_{variant}",
    )
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(base.output)
    model = keras.Model(inputs, logits, name=f"efficientnet_{variant}")
    return convert_to_split_bn(model) if split_bn else model


__all__ = ["DEFAULT_SIZES", "MIN_SIZE", "VARIANTS", "efficientnet"]
