"""The names ``train-images`` accepts for its data, and the resolution rule (no TensorFlow).

``DATASETS`` (``--dataset``), ``POLICIES`` (``--augment``) and ``resolve_image_size``
(``--image-size`` unset -> the model's resolution on ImageNet-scale data) are read by the
command line on either Keras backend before any data is touched; the loaders behind the
names are ``image_datasets`` (tf.data) and ``image_arrays`` (NumPy, the JAX backend).
"""

from __future__ import annotations

from adv_large_batch.flags import ConfigError

#: ``--dataset``: every image dataset (``image_datasets.LOADERS`` has one loader each).
DATASETS = ("fashion_mnist", "cifar10", "imagenet2012", "folder")

#: ``--augment``: every augmentation policy (``augment.build_augmenter``).
POLICIES = ("none", "flip_crop", "inception_crop", "randaugment", "augmix")

#: Datasets whose training images keep their own sizes at an ``image_size``.
LARGE_IMAGE_DATASETS = ("imagenet2012", "folder")

#: ``imagenet2012``'s resolution when neither ``--image-size`` nor the model gives one.
IMAGENET_DEFAULT_SIZE = 224


def resolve_image_size(
    dataset: str, model: str | None = None, image_size: int | None = None
) -> int | None:
    """The ``--image-size`` a run uses: ``image_size`` if given, else a default.

    The default is the model's resolution (``models.image_models.default_image_size``:
    ``resnet*`` 224, ``efficientnet_b0`` 224, ``efficientnet_b2`` 260) for the
    ImageNet-scale datasets (``LARGE_IMAGE_DATASETS``), where ``imagenet2012`` falls
    back to 224 for models without one (``cifar_resnet*``); None (the dataset's own
    size) otherwise.

    ```python
    from adv_large_batch.data.image_names import resolve_image_size

    assert resolve_image_size("imagenet2012", "efficientnet_b2") == 260
    assert resolve_image_size("imagenet2012", "efficientnet_b2", 224) == 224  # explicit wins
    assert resolve_image_size("cifar10", "resnet50") is None                  # 32 x 32
    ```
    """
    if dataset not in DATASETS:
        raise ConfigError(f"--dataset must be one of {DATASETS}, got {dataset!r}")
    if image_size is not None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"--image-size must be an integer >= 1, got {image_size!r}")
        return image_size
    if dataset not in LARGE_IMAGE_DATASETS:
        return None
    size = None
    if model is not None:
        from adv_large_batch.models.image_models import default_image_size

        size = default_image_size(model)
    if size is None and dataset == "imagenet2012":
        size = IMAGENET_DEFAULT_SIZE
    return size


__all__ = [
    "DATASETS",
    "IMAGENET_DEFAULT_SIZE",
    "LARGE_IMAGE_DATASETS",
    "POLICIES",
    "resolve_image_size",
]
