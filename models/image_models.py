"""The image models of ``train-images``: one table {name: how to build it, its smallest input,
its resolution}, and the factory over it.

``build_image_model(name, ...)`` takes ``[0, 1]`` images and returns logits, with split BN
(``SplitBatchNormalization``) unless ``split_bn=False``; ``width`` is the base width of
the ``cifar_resnet*`` models.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import keras

from adv_large_batch.flags import ConfigError
from adv_large_batch.models import efficientnet, resnet
from adv_large_batch.models.inputs import check_image_shape


@dataclasses.dataclass(frozen=True)
class ImageModel:
    """How to build one image model, its smallest input side and its resolution on
    ImageNet-scale data (None: the dataset's own size)."""

    build: Callable[[tuple[int, ...], int, bool, int], keras.Model]
    min_size: int
    image_size: int | None


def _cifar(depth: int) -> ImageModel:
    def build(shape: tuple[int, ...], classes: int, split_bn: bool, width: int) -> keras.Model:
        return resnet.cifar_resnet(depth, shape, classes, width=width, split_bn=split_bn)

    return ImageModel(build, resnet.CIFAR_RESNET_MIN_SIZE, None)


def _resnet(depth: int) -> ImageModel:
    def build(shape: tuple[int, ...], classes: int, split_bn: bool, width: int) -> keras.Model:
        return resnet.resnet(depth, shape, classes, split_bn=split_bn)

    return ImageModel(build, resnet.RESNET_MIN_SIZE, resnet.RESNET_IMAGE_SIZE)


def _efficientnet(variant: str) -> ImageModel:
    def build(shape: tuple[int, ...], classes: int, split_bn: bool, width: int) -> keras.Model:
        return efficientnet.efficientnet(variant, shape, classes, split_bn=split_bn)

    return ImageModel(build, efficientnet.MIN_SIZE, efficientnet.DEFAULT_SIZES[variant])


#: ``--model`` of ``train-images``: every image model, by name.
REGISTRY: dict[str, ImageModel] = {
    **{f"cifar_resnet{d}": _cifar(d) for d in (8, 20, 32, 56)},
    **{f"resnet{d}": _resnet(d) for d in (18, 34, 50, 101)},
    **{f"efficientnet_{v}": _efficientnet(v) for v in ("b0", "b2")},
}
IMAGE_MODELS = tuple(REGISTRY)


def _spec(name: str) -> ImageModel:
    if name not in REGISTRY:
        raise ConfigError(f"--model must be one of {IMAGE_MODELS}, got {name!r}")
    return REGISTRY[name]


def default_image_size(name: str) -> int | None:
    """The resolution model ``name`` trains at on ImageNet-scale data (``--image-size``
    unset): ``resnet*`` 224, ``efficientnet_b0`` 224, ``efficientnet_b2`` 260
    (keras.applications' defaults); None for ``cifar_resnet*`` (the dataset's own size)."""
    return _spec(name).image_size


def check_input_shape(name: str, input_shape: tuple[int, ...]) -> None:
    """Raise ``ConfigError`` if model ``name`` cannot take images of ``input_shape`` (HWC),
    naming the models that can."""
    spec = _spec(name)
    try:
        check_image_shape(name, tuple(input_shape), spec.min_size)
    except ConfigError as err:
        if len(input_shape) != 3 or "at least" not in str(err):
            raise
        side = min(input_shape[:2])
        small = [m for m, s in REGISTRY.items() if s.min_size <= side]
        raise ConfigError(
            f"{err}; use one of {', '.join(small) or 'none'} or larger images"
        ) from None


def build_image_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    split_bn: bool = True,
    width: int = 16,
) -> keras.Model:
    """Image classifier ``name`` (see ``IMAGE_MODELS``): ``[0, 1]`` images in, logits out.

    Raises ``ConfigError`` for an unknown name or an input size the model cannot take.

    ```python
    from adv_large_batch.models.image_models import IMAGE_MODELS, build_image_model

    print(IMAGE_MODELS)   # ('cifar_resnet8', ..., 'efficientnet_b2')
    model = build_image_model("cifar_resnet8", (28, 28, 1), num_classes=10)
    ```
    """
    input_shape = tuple(int(d) for d in input_shape)
    check_input_shape(name, input_shape)
    return _spec(name).build(input_shape, num_classes, split_bn, width)


__all__ = [
    "IMAGE_MODELS",
    "REGISTRY",
    "ImageModel",
    "build_image_model",
    "check_input_shape",
    "default_image_size",
]
