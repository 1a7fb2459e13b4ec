"""Data augmentation for the image runs, applied per example in the tf.data pipeline.

ConAdv §3.1 / §4.4 compare adversarial learning with AutoAugment (AA) and
combine the two (Table 3).  Keras 3.15 ships ``keras.layers.RandAugment``
(whose op set is AutoAugment's: shear, translate, rotate, brightness, color,
contrast, sharpness, posterize, solarize, auto-contrast, equalize) and
``keras.layers.AugMix``, but **no AutoAugment layer** (its learned ImageNet
policy is not in Keras 3, nor in keras-hub 0.32).  ``--augment randaugment``
is therefore this project's stand-in for the paper's AA.  Policies:

none         nothing
flip_crop    random horizontal flip + pad by 1/8 of the side and random crop back
             (the standard CIFAR/ImageNet-at-low-resolution augmentation)
randaugment  flip_crop, then ``keras.layers.RandAugment(num_ops=2, factor=0.5)``
augmix       flip_crop, then ``keras.layers.AugMix``

Images are float32 in ``[0, 1]``; single-channel images are tiled to three
channels for the colour ops of RandAugment/AugMix and averaged back.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

POLICIES = ("none", "flip_crop", "randaugment", "augmix")
VALUE_RANGE = (0.0, 1.0)


def crop_padding(size: int) -> int:
    """Padding before the random crop: 4 px at 32 px (1/8 of the side), at least 1."""
    return max(1, size // 8)


def build_augmenter(
    policy: str, image_shape: tuple[int, int, int], seed: int | None = None
) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function ``image -> augmented image`` (one HWC float image in ``[0, 1]``).

    ```python
    augment = build_augmenter("randaugment", (28, 28, 1), seed=0)
    dataset = dataset.map(lambda x, y: (augment(x), y))
    ```
    """
    if policy not in POLICIES:
        raise ValueError(f"--augment must be one of {POLICIES}, got {policy!r}")
    height, width, channels = image_shape
    if policy == "none":
        return lambda image: image
    pad_h, pad_w = crop_padding(height), crop_padding(width)
    flip = keras.layers.RandomFlip("horizontal", seed=seed)
    crop = keras.layers.RandomCrop(height, width, seed=None if seed is None else seed + 1)
    mixer = None
    if policy == "randaugment":
        mixer = keras.layers.RandAugment(
            value_range=VALUE_RANGE, num_ops=2, factor=0.5, seed=None if seed is None else seed + 2
        )
    elif policy == "augmix":
        mixer = keras.layers.AugMix(
            value_range=VALUE_RANGE, seed=None if seed is None else seed + 2
        )

    def augment(image: tf.Tensor) -> tf.Tensor:
        image = flip(image, training=True)
        padded = tf.pad(image, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]])
        image = crop(padded, training=True)
        if mixer is not None:
            rgb = tf.tile(image, [1, 1, 3]) if channels == 1 else image
            rgb = mixer(rgb, training=True)
            image = tf.reduce_mean(rgb, axis=-1, keepdims=True) if channels == 1 else rgb
        image = tf.clip_by_value(tf.cast(image, tf.float32), *VALUE_RANGE)
        return tf.ensure_shape(image, image_shape)

    return augment


__all__ = ["POLICIES", "build_augmenter", "crop_padding"]
