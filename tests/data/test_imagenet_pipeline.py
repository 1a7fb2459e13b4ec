"""The ImageNet-grade input pipeline (issue 14 item 2).

ImageNet-scale data (``imagenet2012`` through ``tfds.testing.mock_data``, whose
images have random sizes; image folders at an ``--image-size``) trains on
Inception crops of the *un-resized* images and evaluates on the resize + center
crop; each model has its resolution (EfficientNet-B2 260); an image folder over
the memory limit is read from its files with a global per-epoch shuffle that
resumes exactly.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from adv_large_batch import cli
from adv_large_batch.data import (
    augment,
    image_datasets,
    image_folders,
    image_names,
    image_pipeline,
    image_splits,
)
from adv_large_batch.flags import ConfigError
from adv_large_batch.models import efficientnet
from adv_large_batch.models.image_models import IMAGE_MODELS, default_image_size


def take(stream: tf.data.Dataset, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [batch for _, batch in zip(range(n), stream.as_numpy_iterator())]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (x, y), (x_ref, y_ref) in zip(a, b):
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(x, x_ref)


# ---- per-model resolution --------------------------------------------------------------------
def test_each_model_has_its_resolution_and_an_explicit_size_wins():
    assert image_names.resolve_image_size("imagenet2012", "efficientnet_b2") == 260
    assert image_names.resolve_image_size("imagenet2012", "efficientnet_b0") == 224
    assert image_names.resolve_image_size("folder", "efficientnet_b2") == 260
    for depth in (18, 34, 50, 101):
        assert image_names.resolve_image_size("imagenet2012", f"resnet{depth}") == 224
    assert image_names.resolve_image_size("imagenet2012", "efficientnet_b2", 224) == 224
    # cifar_resnet*: the dataset's own size (ImageNet has none: 224).
    assert image_names.resolve_image_size("folder", "cifar_resnet20") is None
    assert image_names.resolve_image_size("imagenet2012", "cifar_resnet20") == 224
    # Small datasets keep their size whatever the model.
    assert image_names.resolve_image_size("cifar10", "efficientnet_b2") is None
    assert image_names.resolve_image_size("fashion_mnist", "resnet50") is None
    assert image_names.resolve_image_size("cifar10", "resnet50", 64) == 64
    assert all(
        (default_image_size(m) is None) == m.startswith("cifar_resnet") for m in IMAGE_MODELS
    )


def test_efficientnet_sizes_are_keras_applications_defaults():
    for variant, size in efficientnet.DEFAULT_SIZES.items():
        net = efficientnet.VARIANTS[variant](weights=None, classes=10)  # default input shape
        assert net.input_shape[1:3] == (size, size), variant
        keras.backend.clear_session()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: image_names.resolve_image_size("imagenet2012", "resnet50", 0), "--image-size"),
        (lambda: image_names.resolve_image_size("mnist"), "--dataset must be one of"),
        (lambda: image_names.resolve_image_size("folder", "vgg16"), "--model must be one of"),
        (lambda: image_pipeline.seeded_augmenter("cutout", (8, 8, 3)), "--augment must be one of"),
    ],
)
def test_bad_values_are_named(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


# ---- the Inception crop ----------------------------------------------------------------------
def coordinate_image(height, width):
    """Channel 0 codes the row, channel 1 the column (pixel centres, in [0, 1])."""
    rows = (np.arange(height) + 0.5) / height
    cols = (np.arange(width) + 0.5) / width
    image = np.stack(np.broadcast_arrays(rows[:, None], cols[None, :], 0.5), axis=-1)
    return image.astype(np.float32)


def window_of(out, height, width):
    """(top, left, h, w, flipped) of the source window, read off a crop of a coordinate image."""
    size = out.shape[0]
    stretch = size / (size - 1)
    rows, cols = out[:, size // 2, 0], out[size // 2, :, 1]
    flipped = cols[-1] < cols[0]
    cols = cols[::-1] if flipped else cols
    h = (rows[-1] - rows[0]) * height * stretch
    w = (cols[-1] - cols[0]) * width * stretch
    top = rows[0] * height - h / (2 * size)
    left = cols[0] * width - w / (2 * size)
    return top, left, h, w, flipped


def test_inception_crop_draws_windows_of_the_documented_areas_and_aspect_ratios():
    height, width, size = 120, 160, 24
    image = tf.constant(coordinate_image(height, width))
    windows = []
    for i in range(64):
        out = augment.inception_crop_flip(image, size, tf.constant([7, i], tf.int64)).numpy()
        assert out.shape == (size, size, 3)
        windows.append(window_of(out, height, width))
    tops, lefts, hs, ws, flips = map(np.array, zip(*windows))
    areas = hs * ws / (height * width)
    assert areas.min() >= 0.1 - 0.02 and areas.max() <= 1.0 + 0.02  # min_object_covered 0.1
    assert areas.min() < 0.3 and areas.max() > 0.7  # spread over the range, not one crop
    assert np.all(ws / hs >= 3 / 4 - 0.05) and np.all(ws / hs <= 4 / 3 + 0.05)
    assert np.all(tops >= -1) and np.all(lefts >= -1)
    assert np.all(tops + hs <= height + 1) and np.all(lefts + ws <= width + 1)
    assert 10 < flips.sum() < 54  # a fair coin for the flip
    # Stateless: the same seed gives the same crop.
    seed = np.array([7, 3], np.int64)
    again = augment.inception_crop_flip(image, size, tf.constant(seed))
    np.testing.assert_array_equal(again, augment.inception_crop_flip(image, size, seed))


def test_inception_crop_falls_back_to_the_evaluation_crop():
    # 2 x 200: a window of aspect ratio <= 4/3 covers at most 2 x 3 pixels, far below 10%:
    # every attempt fails and the sampler returns the whole image.
    image = tf.constant(np.random.default_rng(0).random((2, 200, 3)).astype(np.float32))
    _, _, whole = augment.inception_window(tf.shape(image), tf.constant([1, 2], tf.int64))
    assert bool(whole)
    out = augment.inception_crop(image, 16, tf.constant([1, 2], tf.int64))
    np.testing.assert_allclose(out, augment.central_crop(image, 16), atol=1e-6)


# ---- imagenet2012 (tfds mock data, images of random sizes) ----------------------------------
@pytest.fixture
def imagenet(tmp_path):
    """imagenet2012 at EfficientNet-B2's default resolution, with the raw splits to compare."""
    with tfds.testing.mock_data(num_examples=8):
        size = image_names.resolve_image_size("imagenet2012", "efficientnet_b2")
        data = image_datasets.load_image_dataset("imagenet2012", str(tmp_path), image_size=size)
        raw_train, raw_test = tfds.load(
            "imagenet2012",
            split=["train", "validation"],
            data_dir=str(tmp_path),
            as_supervised=True,
            download=False,
        )
        raw = {
            "train": [(x.numpy(), int(y)) for x, y in raw_train],
            "test": [(x.numpy(), int(y)) for x, y in raw_test],
        }
        yield data, raw


def test_imagenet_trains_on_the_unresized_images_and_tests_on_center_crops(imagenet):
    data, raw = imagenet
    assert data.image_shape == (260, 260, 3) and data.variable_size and data.source == "tfds"
    assert len({x.shape for x, _ in raw["train"]}) > 1  # the mock's images differ in size
    train = [(x, int(y)) for x, y in data.train.as_numpy_iterator()]
    assert len(train) == data.num_train == len(raw["train"])
    for (x, y), (x_raw, y_raw) in zip(train, raw["train"]):
        assert y == y_raw
        np.testing.assert_array_equal(x, x_raw)  # decoded, not resized
    images, labels = next(iter(image_pipeline.eval_batches(data.test, 8)))
    assert images.shape == (8, 260, 260, 3)
    for image, label, (x_raw, y_raw) in zip(images.numpy(), labels.numpy(), raw["test"]):
        assert label == y_raw
        expected = image_datasets.resize_central(tf.constant(x_raw), 260).numpy() / 255.0
        np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image_pipeline.materialize(data.train, data.num_train, data.image_shape) is None
    with pytest.raises(ConfigError, match="train_for_eval"):
        image_pipeline.eval_batches(data.train, 4)
    crops = next(iter(image_pipeline.eval_batches(data.train_for_eval(), 8)))[0]
    assert crops.shape == (8, 260, 260, 3)


def test_imagenet_train_batches_are_random_resized_crops(imagenet):
    data, raw = imagenet
    by_label = {y: x for x, y in raw["train"]}
    assert len(by_label) == len(raw["train"])  # labels tell the mock's examples apart
    center = {
        y: image_datasets.resize_central(tf.constant(x), 260).numpy() / 255.0
        for y, x in by_label.items()
    }
    augment_fn = image_pipeline.seeded_augmenter("flip_crop", data.image_shape, seed=0)

    def crops(seed, epochs=2):
        stream = image_pipeline.train_stream(data.train, data.num_train, 8, seed, augment_fn)
        return [{int(y): x for x, y in zip(*batch)} for batch in take(stream, epochs)]

    epoch0, epoch1 = crops(0)
    other_seed = crops(1, epochs=1)[0]
    assert sorted(epoch0) == sorted(by_label)  # an epoch is every example once
    for y in by_label:
        assert epoch0[y].shape == (260, 260, 3) and epoch0[y].dtype == np.float32
        assert 0 <= epoch0[y].min() and epoch0[y].max() <= 1
    # Not CIFAR's zero-pad + crop (which leaves zero rows or columns at a border).
    for image in epoch0.values():
        borders = (image[0], image[-1], image[:, 0], image[:, -1])
        assert all(np.abs(b).max() > 0 for b in borders)
    # Not the evaluation crop, and a new crop per epoch and per seed.
    differs = lambda a, b: np.abs(a - b).max() > 0.05  # noqa: E731
    assert sum(differs(epoch0[y], center[y]) for y in by_label) >= 6
    assert sum(differs(epoch0[y], epoch1[y]) for y in by_label) >= 6
    assert sum(differs(epoch0[y], other_seed[y]) for y in by_label) >= 6
    # The "none" policy is the evaluation crop itself.
    plain = image_pipeline.seeded_augmenter("none", data.image_shape)
    stream = image_pipeline.train_stream(data.train, data.num_train, 8, 0, plain)
    for image, label in zip(*take(stream, 1)[0]):
        np.testing.assert_allclose(image, center[int(label)], atol=0.5 / 255 + 1e-6)


def test_imagenet_stream_is_stateless_and_resumes_exactly(imagenet):
    data, _ = imagenet
    augment_fn = image_pipeline.seeded_augmenter("flip_crop", data.image_shape, seed=3)
    assert not image_pipeline.random_access(data.train)  # tfds records: the block shuffle

    def stream(start_step=0, rank=0, size=1):
        return image_pipeline.train_stream(
            data.train, data.num_train, 4 // size, 3, augment_fn, rank, size, start_step,
            shuffle_buffer=3,  # several (ragged) blocks of differently sized images
        )  # fmt: skip

    tf.random.set_seed(1)
    whole = take(stream(), 6)  # 2 steps per epoch
    tf.random.set_seed(2)  # the global seed plays no part
    assert_same_batches(take(stream(), 6), whole)
    for g in (1, 2, 3):
        assert_same_batches(take(stream(g), 6 - g), whole[g:])
    for epoch in range(3):
        labels = np.concatenate([y for _, y in whole[2 * epoch : 2 * epoch + 2]])
        assert len(set(labels.tolist())) == 8
    # Two workers (each its own shard) also resume exactly.
    for rank in range(2):
        ranks_whole = take(stream(0, rank, 2), 4)
        assert_same_batches(take(stream(3, rank, 2), 1), ranks_whole[3:])


@pytest.mark.parametrize("policy", ["none", "flip_crop", "inception_crop", "randaugment", "augmix"])
def test_every_policy_crops_images_of_any_size_to_the_model_resolution(policy):
    augment_fn = image_pipeline.seeded_augmenter(policy, (24, 24, 3), seed=0)
    images = [np.random.default_rng(i).random(shape) for i, shape in enumerate([(30, 50, 3)])]
    ds = tf.data.Dataset.from_generator(
        lambda: (x.astype(np.float32) for x in images),
        output_signature=tf.TensorSpec((None, None, 3), tf.float32),
    )
    out = next(iter(ds.map(lambda x: augment_fn(x, tf.constant([0, 1], tf.int64)))))
    assert out.shape == (24, 24, 3)
    assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 1


def test_small_fixed_size_images_keep_the_cifar_augmentation():
    image = tf.constant(np.random.default_rng(0).random((16, 16, 3)).astype(np.float32))
    seed = tf.constant([4, 5], tf.int64)
    flip_crop = image_pipeline.seeded_augmenter("flip_crop", (16, 16, 3))(image, seed)
    np.testing.assert_array_equal(flip_crop, augment.pad_crop(image, seed))  # zero-pad + crop
    inception = image_pipeline.seeded_augmenter("inception_crop", (16, 16, 3))(image, seed)
    np.testing.assert_allclose(inception, augment.inception_crop_flip(image, 16, seed))
    none = image_pipeline.seeded_augmenter("none", (16, 16, 3))(image, seed)
    np.testing.assert_array_equal(none, image)


# ---- image folders over the memory limit -----------------------------------------------------
def write_image_folder(root, classes=3, per_class=12, test_per_class=2, sizes=(20, 48), seed=0):
    """train/<class>/ and test/<class>/ of PNGs of random sizes; pixel (0, 0) holds the class."""
    rng = np.random.default_rng(seed)
    shapes = {}
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in range(classes):
            for i in range(n):
                h, w = (int(v) for v in rng.integers(*sizes, 2))
                image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                path = os.path.join(root, split, f"class{c}", f"{i:03d}.png")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                tf.io.write_file(path, tf.io.encode_png(image))
                shapes[path] = image.shape
    return shapes


def test_a_folder_over_the_memory_limit_is_streamed_with_a_global_shuffle(tmp_path):
    write_image_folder(str(tmp_path))  # 36 training images, in class order on disk
    limit = 36 * 16 * 16 * 3 - 1  # one byte short of the estimate at 16 px
    files = image_folders.load_folder(str(tmp_path), 16, in_memory_bytes=limit)
    memory = image_folders.load_folder(str(tmp_path), 16)
    assert (files.source, memory.source) == ("files", "memory")
    assert files.variable_size and files.image_shape == (16, 16, 3) and files.num_train == 36
    assert image_pipeline.materialize(files.train, 36, files.image_shape) is None
    assert image_pipeline.random_access(files.train)
    sizes = {x.shape for x, _ in files.train.as_numpy_iterator()}
    assert len(sizes) > 1  # the files' own sizes, for the crop
    augment_fn = image_pipeline.seeded_augmenter("flip_crop", files.image_shape, seed=5)

    def stream(data, seed=5, start_step=0, batch=6, rank=0, size=1):
        # A shuffle window of one class, as 10,000 images are a few classes of an
        # ImageNet folder: a window shuffle would give batches of one class.
        return image_pipeline.train_stream(
            data.train, data.num_train, batch, seed, augment_fn, rank, size, start_step,
            shuffle_buffer=12,
        )  # fmt: skip

    whole = take(stream(files), 18)  # 6 steps per epoch, 3 epochs
    # A global shuffle: every batch mixes classes (the files are in class order).
    assert all(len(set(y.tolist())) > 1 for _, y in whole)
    epochs = [np.concatenate([y for _, y in whole[6 * e : 6 * e + 6]]) for e in range(3)]
    for labels in epochs:
        assert np.bincount(labels).tolist() == [12, 12, 12]
    assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
    # Exact resume from any step, mid-epoch or at a boundary.
    for g in (2, 6, 9):
        assert_same_batches(take(stream(files, start_step=g), 18 - g), whole[g:])
    # Stateless: rebuilt, the same seed gives the same batches; another seed others.
    assert_same_batches(take(stream(files), 4), whole[:4])
    assert not np.array_equal(take(stream(files, seed=6), 1)[0][1], whole[0][1])
    # The same batches as the in-memory copy, and as two workers' slices of each step.
    assert_same_batches(take(stream(memory), 18), whole)
    halves = [take(stream(files, batch=3, rank=r, size=2), 4) for r in range(2)]
    for step in range(4):
        x = np.concatenate([halves[0][step][0], halves[1][step][0]])
        y = np.concatenate([halves[0][step][1], halves[1][step][1]])
        assert_same_batches([(x, y)], whole[step : step + 1])
    # Evaluation: center crops of the test files, in order, from either source.
    test_files = next(iter(image_pipeline.eval_batches(files.test, 6)))
    test_memory = next(iter(image_pipeline.eval_batches(memory.test, 6)))
    assert test_files[0].shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(test_files[0], test_memory[0])
    np.testing.assert_array_equal(test_files[1], [0, 0, 1, 1, 2, 2])


def test_the_memory_limit_applies_to_load_image_dataset(tmp_path, monkeypatch):
    write_image_folder(str(tmp_path), classes=2, per_class=4)
    assert (
        image_datasets.load_image_dataset("folder", str(tmp_path), image_size=8).source == "memory"
    )
    monkeypatch.setattr(image_splits, "IN_MEMORY_BYTES", 8 * 8 * 3 * 8 - 1)
    assert (
        image_datasets.load_image_dataset("folder", str(tmp_path), image_size=8).source == "files"
    )
    with pytest.raises(ConfigError, match="in_memory_bytes must be an integer >= 0, got -1"):
        image_folders.load_folder(str(tmp_path), 8, in_memory_bytes=-1)


def test_the_estimate_is_checked_against_the_decoded_sizes(tmp_path):
    # Files x 16^2 x 3 fits, but the originals (20-48 px) do not: still streamed.
    write_image_folder(str(tmp_path), classes=2, per_class=4)
    data = image_folders.load_folder(str(tmp_path), 16, in_memory_bytes=8 * 16 * 16 * 3)
    assert data.source == "files"


def test_a_native_size_folder_over_the_limit_is_streamed_too(tmp_path):
    rng = np.random.default_rng(1)
    for c in range(2):
        for i in range(10):
            path = tmp_path / f"c{c}" / f"{i}.png"
            os.makedirs(path.parent, exist_ok=True)
            image = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            tf.io.write_file(str(path), tf.io.encode_png(image))
    files = image_folders.load_folder(str(tmp_path), in_memory_bytes=100)
    memory = image_folders.load_folder(str(tmp_path))
    assert (files.source, memory.source) == ("files", "memory")
    assert not files.variable_size and files.image_shape == (8, 8, 3) == memory.image_shape
    arrays = image_pipeline.materialize(memory.train, memory.num_train, memory.image_shape)
    augment_fn = image_pipeline.seeded_augmenter("flip_crop", (8, 8, 3), seed=0)
    from_files = image_pipeline.train_stream(files.train, 18, 6, 0, augment_fn)
    from_arrays = image_pipeline.train_stream(memory.train, 18, 6, 0, augment_fn, arrays=arrays)
    assert_same_batches(take(from_files, 6), take(from_arrays, 6))
    # An image of another size is reported, with its file, when it is read.
    tf.io.write_file(
        str(tmp_path / "c1" / "0.png"), tf.io.encode_png(np.zeros((9, 8, 3), np.uint8))
    )
    odd = image_folders.load_folder(str(tmp_path), in_memory_bytes=100)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images of mixed sizes.*c1/0\.png"):
        list(odd.train.as_numpy_iterator())


def test_train_images_runs_a_streamed_folder_at_the_model_resolution(tmp_path, monkeypatch):
    """The real run: resnet18 without --image-size trains on 224 px crops of a streamed folder."""
    write_image_folder(str(tmp_path / "data"), classes=2, per_class=4, test_per_class=1)
    monkeypatch.setattr(image_splits, "IN_MEMORY_BYTES", 1000)
    metrics = tmp_path / "metrics.json"
    code = cli.main(
        [
            "train-images", "--dataset", "folder", "--data-dir", str(tmp_path / "data"),
            "--model", "resnet18", "--method", "baseline", "--batch-size", "4",
            "--epochs", "1", "--verbose", "0", "--metrics-out", str(metrics),
        ]
    )  # fmt: skip
    assert code == 0
    result = json.loads(metrics.read_text())
    assert result["config"]["run"]["image_size"] == 224 and result["steps"] == 2
    assert np.isfinite(result["test_loss"])
