"""Data augmentation for the image runs, applied per example in the tf.data pipeline.

ConAdv §3.1 / §4.4 compare adversarial learning with AutoAugment (AA) and
combine the two (Table 3).  Keras 3.15 ships ``keras.layers.RandAugment``
(whose op set is AutoAugment's: shear, translate, rotate, brightness, color,
contrast, sharpness, posterize, solarize, auto-contrast, equalize) and
``keras.layers.AugMix``, but **no AutoAugment layer** (its learned ImageNet
policy is not in Keras 3, nor in keras-hub 0.32).  ``--augment randaugment``
is therefore this project's stand-in for the paper's AA.

Two kinds of training images meet these policies:

* **small, fixed-size images** already at the model's input shape (Fashion-MNIST,
  CIFAR-10, an image folder at its native size, any of them resized by
  ``--image-size``);
* **ImageNet-scale images** of their own sizes (``imagenet2012`` and image folders
  at an ``--image-size``: the training split is decoded but not resized), which
  must be cropped to the model's resolution.

Policies (``POLICIES``):

==============  =====================================  ===============================
policy          small, fixed-size images               ImageNet-scale images
==============  =====================================  ===============================
none            unchanged                              the evaluation crop (``central_crop``)
flip_crop       random horizontal flip, zero-pad by    Inception crop + random flip
(default)       1/8 of the side, random crop back      (``inception_crop``)
inception_crop  Inception crop + flip of the image,    Inception crop + random flip
                resized back to its own size
randaugment     flip_crop, then                        Inception crop + flip, then
                ``keras.layers.RandAugment(2, 0.5)``   ``RandAugment``
augmix          flip_crop, then ``keras.layers.AugMix``  Inception crop + flip, then ``AugMix``
==============  =====================================  ===============================

So ``--augment flip_crop`` means "the standard augmentation for the data": the
CIFAR one for small images, the ImageNet one for ImageNet-scale images.

The Inception crop (Szegedy et al. 2015; torchvision's ``RandomResizedCrop``)
follows tensorflow/tpu's ``models/official/resnet/resnet_preprocessing.py``
(``_decode_and_random_crop``, also the ConAdv authors' ImageNet input): a window
from ``tf.image.sample_distorted_bounding_box`` (``stateless_`` here) with
``min_object_covered=0.1``, area fraction in ``[0.08, 1]``, aspect ratio
(width / height) in ``[3/4, 4/3]`` and 10 attempts; if the window is the whole
image (all attempts failed) it falls back to the evaluation crop.  Then the
window is resized to the model's resolution and flipped at random.  Two
deviations from the TPU code: resizing is bilinear with antialiasing (as the
evaluation crop here, instead of bicubic), and the fallback / evaluation crop is
``central_crop`` (shorter side to ``size / 0.875``, then the central
``size x size``; the TPU code takes ``size / (size + 32)`` of the shorter side,
the same at 224 px).

Images are float32 in ``[0, 1]``; single-channel images are tiled to three
channels for the colour ops of RandAugment/AugMix and averaged back.  The
stateless functions (``pad_crop``, ``inception_crop``, ``random_flip``) draw
from a seed of shape ``[2]``; ``image_pipeline.seeded_augmenter`` feeds them the
per-example seed so that a resumed run redraws the same augmentation.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from adv_large_batch.data.image_names import POLICIES
from adv_large_batch.models.inputs import IMAGE_RANGE

VALUE_RANGE = IMAGE_RANGE  # the images' range (models/inputs.py)
#: Evaluation crop: the central ``size x size`` after resizing the shorter side to
#: ``size / CENTRAL_FRACTION`` (256 px for 224).
CENTRAL_FRACTION = 0.875
#: Inception crop (tensorflow/tpu's resnet_preprocessing): area fraction, aspect
#: ratio (width / height), attempts before the fallback, minimum coverage of the image.
INCEPTION_AREA_RANGE = (0.08, 1.0)
INCEPTION_ASPECT_RANGE = (3 / 4, 4 / 3)
INCEPTION_ATTEMPTS = 10
INCEPTION_MIN_COVERED = 0.1


def crop_padding(size: int) -> int:
    """Padding before the random crop: 4 px at 32 px (1/8 of the side), at least 1."""
    return max(1, size // 8)


def _target(size: int | tuple[int, int]) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if height < 1 or width < 1:
        raise ValueError(f"crop size must be >= 1 x 1, got {height}x{width}")
    return int(height), int(width)


def central_crop(image: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """The evaluation crop of an HWC image as float32 (same value range, not rounded).

    Resize (bilinear, antialiased) so that the image covers ``size / 0.875``
    (for a square ``size``: the shorter side becomes ``size / 0.875``), then take
    the central ``size`` window.  ``image_splits.resize_central`` is this, rounded to
    uint8.
    """
    height, width = _target(size)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.reduce_max(tf.constant([height, width], tf.float32) / shape) / CENTRAL_FRACTION
    new = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), [height, width])
    resized = tf.image.resize(image, new, antialias=True)
    top, left = (new[0] - height) // 2, (new[1] - width) // 2
    return resized[top : top + height, left : left + width]


def inception_window(
    image_shape: tf.Tensor, seed: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(begin, size, whole)``: the Inception crop's window of an image of ``image_shape``.

    ``begin`` / ``size`` are ``tf.slice`` arguments (``[y, x, 0]``, ``[h, w, -1]``);
    ``whole`` is true when the sampler returned the whole image (every attempt
    failed), where ``inception_crop`` falls back to ``central_crop``.
    """
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        image_shape,
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]], tf.float32),
        seed=seed,
        min_object_covered=INCEPTION_MIN_COVERED,
        aspect_ratio_range=INCEPTION_ASPECT_RANGE,
        area_range=INCEPTION_AREA_RANGE,
        max_attempts=INCEPTION_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    whole = tf.reduce_all(tf.equal(size[:2], tf.cast(image_shape[:2], size.dtype)))
    return begin, size, whole


def inception_crop(image: tf.Tensor, size: int | tuple[int, int], seed: tf.Tensor) -> tf.Tensor:
    """The Inception (random-resized) crop of an HWC image of any size, resized to ``size``.

    Stateless: the window is a pure function of ``seed`` (shape ``[2]``) and the
    image's shape.  Float32 out, in the input's value range.  No flip (``random_flip``).
    """
    height, width = _target(size)
    begin, window, whole = inception_window(tf.shape(image), seed)

    def random_window() -> tf.Tensor:
        crop = tf.slice(image, begin, window)
        return tf.image.resize(crop, [height, width], antialias=True)

    out = tf.cond(whole, lambda: central_crop(image, (height, width)), random_window)
    return tf.ensure_shape(out, [height, width, image.shape[-1]])


def random_flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A horizontal flip with probability 1/2, drawn from ``seed`` (stateless)."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def pad_crop(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``flip_crop`` of a small image: random flip, zero-pad by 1/8 of the side, crop back."""
    flip_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    height, width, channels = image.shape
    pad_h, pad_w = crop_padding(height), crop_padding(width)
    image = random_flip(image, flip_seed)
    padded = tf.pad(image, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]])
    return tf.image.stateless_random_crop(padded, (height, width, channels), crop_seed)


def inception_crop_flip(
    image: tf.Tensor, size: int | tuple[int, int], seed: tf.Tensor
) -> tf.Tensor:
    """``inception_crop`` then ``random_flip``, from two seeds split off ``seed``."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = inception_crop(image, size, crop_seed)
    return tf.clip_by_value(random_flip(image, flip_seed), *VALUE_RANGE)


def _mixer(policy: str, seed: int | None) -> keras.layers.Layer | None:
    seed = None if seed is None else seed + 2
    if policy == "randaugment":
        return keras.layers.RandAugment(value_range=VALUE_RANGE, num_ops=2, factor=0.5, seed=seed)
    if policy == "augmix":
        return keras.layers.AugMix(value_range=VALUE_RANGE, seed=seed)
    return None


def build_augmenter(
    policy: str,
    image_shape: tuple[int, int, int],
    seed: int | None = None,
    crop: bool = True,
) -> Callable[[tf.Tensor], tf.Tensor]:
    """A function ``image -> augmented image`` (an HWC float image in ``[0, 1]``, ``image_shape``).

    Drawn from stateful generators (Keras' layers), so not reproduced by a resumed run;
    ``image_pipeline.seeded_augmenter`` wraps it for the ``randaugment`` / ``augmix``
    policies.  ``crop=False`` leaves out the flip and crop (the caller has cropped
    already), leaving only RandAugment's / AugMix's ops.

    ```python
    import numpy as np, tensorflow as tf
    from adv_large_batch.data.augment import build_augmenter

    augment = build_augmenter("randaugment", (28, 28, 1), seed=0)
    images = np.random.rand(4, 28, 28, 1).astype("float32")   # in [0, 1]
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(4)))
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
    random_crop = keras.layers.RandomCrop(height, width, seed=None if seed is None else seed + 1)
    mixer = _mixer(policy, seed)

    def augment(image: tf.Tensor) -> tf.Tensor:
        if crop and policy == "inception_crop":
            draw = tf.random.uniform([2], 0, 2**31 - 1, tf.int32, seed=seed)
            image = inception_crop_flip(image, (height, width), draw)
        elif crop:
            image = flip(image, training=True)
            padded = tf.pad(image, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]])
            image = random_crop(padded, training=True)
        if mixer is not None:
            rgb = tf.tile(image, [1, 1, 3]) if channels == 1 else image
            rgb = mixer(rgb, training=True)
            image = tf.reduce_mean(rgb, axis=-1, keepdims=True) if channels == 1 else rgb
        image = tf.clip_by_value(tf.cast(image, tf.float32), *VALUE_RANGE)
        return tf.ensure_shape(image, image_shape)

    return augment


__all__ = [
    "CENTRAL_FRACTION",
    "INCEPTION_AREA_RANGE",
    "INCEPTION_ASPECT_RANGE",
    "INCEPTION_ATTEMPTS",
    "POLICIES",
    "build_augmenter",
    "central_crop",
    "crop_padding",
    "inception_crop",
    "inception_crop_flip",
    "inception_window",
    "pad_crop",
    "random_flip",
]
