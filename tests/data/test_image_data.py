"""Image data: Fashion-MNIST (real files), tfds (mocked), image folders, pipelines, augmentation."""

import gzip
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from adv_large_batch import cli
from adv_large_batch.data import image_datasets, image_folders, image_pipeline
from adv_large_batch.data.augment import POLICIES, build_augmenter, crop_padding
from adv_large_batch.flags import ConfigError


# ---- Fashion-MNIST ----------------------------------------------------------------------------
def test_read_idx_parses_a_hand_written_file(tmp_path):
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in values.shape)
    path = str(tmp_path / "x-idx3-ubyte.gz")
    with gzip.open(path, "wb") as f:
        f.write(header + values.tobytes())
    np.testing.assert_array_equal(image_datasets.read_idx(path), values)


@pytest.mark.skipif(
    not os.path.isdir(image_datasets.FASHION_MNIST_DIR),
    reason="apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist_from_the_debian_files():
    data = image_datasets.load_fashion_mnist()
    assert (data.num_train, data.num_test, data.num_classes) == (60000, 10000, 10)
    assert data.image_shape == (28, 28, 1) and data.class_names[9] == "ankle boot"
    images, labels = next(iter(data.train.batch(60000)))
    assert images.dtype == tf.uint8 and images.shape == (60000, 28, 28, 1)
    # Fashion-MNIST's training set is balanced: 6,000 images per class.
    np.testing.assert_array_equal(np.bincount(labels.numpy(), minlength=10), [6000] * 10)
    small = data.limit(train=100, test=20)
    assert small.num_train == 100 and len(list(small.test)) == 20


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        image_datasets.load_fashion_mnist(str(tmp_path))


# ---- tensorflow-datasets ------------------------------------------------------------------------
def test_cifar10_and_imagenet_through_tfds_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=6):
        cifar = image_datasets.load_image_dataset("cifar10", data_dir=str(tmp_path))
        imagenet = image_datasets.load_image_dataset(
            "imagenet2012", data_dir=str(tmp_path), image_size=40
        )
        cifar_images, cifar_labels = next(iter(image_pipeline.eval_batches(cifar.train, 6)))
        imagenet_images, _ = next(iter(image_pipeline.eval_batches(imagenet.test, 6)))
    assert (cifar.num_train, cifar.num_classes, cifar.image_shape) == (6, 10, (32, 32, 3))
    assert cifar_images.shape == (6, 32, 32, 3) and cifar_labels.dtype == tf.int32
    assert float(tf.reduce_min(cifar_images)) >= 0 and float(tf.reduce_max(cifar_images)) <= 1
    assert (imagenet.num_classes, imagenet.image_shape) == (1000, (40, 40, 3))
    assert imagenet_images.shape == (6, 40, 40, 3)  # mock images of random sizes, resized


def test_unprepared_tfds_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="'cifar10' is not prepared in data_dir"):
        image_datasets.load_image_dataset("cifar10", data_dir=str(tmp_path))


def test_resize_central_crops_the_middle():
    # A 20 x 40 image whose columns count 0..39 (x 5).  Scale (16 / 0.875) / 20 = 0.914:
    # 18 x round(36.57) = 37 after resizing; the central 16 columns start at (37 - 16) // 2 = 10.
    image = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 5, (20, 1, 3))
    out = image_datasets.resize_central(tf.constant(image), 16).numpy()
    assert out.shape == (16, 16, 3)
    # Output column j samples input column (10 + j + 0.5) * 40 / 37 - 0.5 (half-pixel centres);
    # resizing a linear ramp keeps it linear, up to rounding to uint8.
    expected = ((10 + np.arange(16) + 0.5) * 40 / 37 - 0.5) * 5
    np.testing.assert_allclose(out[8, :, 0], expected, atol=1.0)


# ---- folders of images --------------------------------------------------------------------------
def write_png(path, shape, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(np.full(shape, value, np.uint8)))


def test_folder_of_class_subfolders_holds_out_every_tenth_image(tmp_path):
    for c, name in enumerate(["cat", "dog"]):
        for i in range(12):
            write_png(str(tmp_path / name / f"{i:02d}.png"), (5, 7, 3), 10 * c + i)
    (tmp_path / "notes.txt").write_text("not an image")
    data = image_datasets.load_image_dataset("folder", data_dir=str(tmp_path))
    assert data.class_names == ("cat", "dog") and data.image_shape == (5, 7, 3)
    assert (data.num_train, data.num_test) == (22, 2)  # image 09 of each class is held out
    test = [(int(x[0, 0, 0]), int(y)) for x, y in data.test.as_numpy_iterator()]
    assert test == [(9, 0), (19, 1)]


def test_folder_with_train_and_test_subfolders(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for name in ("a", "b"):
            for i in range(n):
                write_png(str(tmp_path / split / name / f"{i}.png"), (4, 4, 1), i)
    data = image_folders.load_folder(str(tmp_path))
    assert (data.num_train, data.num_test, data.num_classes) == (6, 4, 2)


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "readme.txt").write_text("nothing")
    with pytest.raises(FileNotFoundError, match="no images"):
        image_folders.load_folder(str(tmp_path))


def test_folder_of_mixed_sizes_is_an_error_unless_resized(tmp_path):
    write_png(str(tmp_path / "a" / "small.png"), (8, 8, 3), 1)
    write_png(str(tmp_path / "a" / "large.png"), (9, 8, 3), 2)
    with pytest.raises(
        ConfigError, match="images of mixed sizes: .*large.png is 9x8x3 but .*small"
    ):
        image_folders.load_folder(str(tmp_path))
    assert image_folders.load_folder(str(tmp_path), image_size=6).image_shape == (6, 6, 3)


def test_cli_rejects_an_empty_image_folder(tmp_path, capsys):
    code = cli.main(["train-images", "--dataset", "folder", "--data-dir", str(tmp_path)])
    assert code == 2 and "no images" in capsys.readouterr().err


# ---- pipelines and augmentation -----------------------------------------------------------------
def tiny_split(n=10, shape=(4, 4, 1)):
    images = (np.arange(n)[:, None, None, None] * np.ones(shape)).astype(np.uint8)
    return tf.data.Dataset.from_tensor_slices((images, np.arange(n, dtype=np.int32)))


def train_batches(split, batch_size, seed, shuffle_buffer=10_000):
    """An endless stream of shuffled ``[0, 1]`` batches (was ``image_pipeline.train_batches``,
    which only this test used; the training runs use ``image_pipeline.train_stream``)."""

    def prepare(image, label):
        return image_pipeline.to_unit_range(image), tf.cast(label, tf.int32)

    return (
        split.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        .repeat()
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def test_train_batches_are_endless_shuffled_unit_range_batches():
    batches = train_batches(tiny_split(), batch_size=4, seed=0)
    seen = [next_ for _, next_ in zip(range(5), batches.as_numpy_iterator())]
    for x, y in seen:
        assert x.shape == (4, 4, 4, 1) and x.dtype == np.float32
        np.testing.assert_allclose(x[:, 0, 0, 0], y / 255.0)  # image i belongs with label i
    labels = np.concatenate([y for _, y in seen])
    assert len(labels) == 20 and set(labels) == set(range(10))  # past one pass: it repeats
    assert labels[:10].tolist() != list(range(10))  # shuffled


def test_eval_batches_keep_order_and_the_last_partial_batch():
    labels = np.concatenate([y for _, y in image_pipeline.eval_batches(tiny_split(), 4)])
    assert labels.tolist() == list(range(10))


def is_crop_of_padded(out, image, pad):
    """True if ``out`` is an HxW window of ``image`` zero-padded by ``pad`` (maybe mirrored)."""
    h, w = image.shape[:2]
    for candidate in (image, image[:, ::-1]):
        padded = np.pad(candidate, ((pad, pad), (pad, pad), (0, 0)))
        for i in range(2 * pad + 1):
            for j in range(2 * pad + 1):
                if np.allclose(padded[i : i + h, j : j + w], out, atol=1e-6):
                    return True
    return False


def test_flip_crop_is_a_window_of_the_padded_image():
    rng = np.random.default_rng(0)
    image = rng.random((16, 16, 1)).astype(np.float32)
    augment = build_augmenter("flip_crop", (16, 16, 1), seed=3)
    outputs = [augment(tf.constant(image)).numpy() for _ in range(6)]
    assert all(is_crop_of_padded(out, image, crop_padding(16)) for out in outputs)
    assert any(not np.array_equal(out, image) for out in outputs)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_every_policy_runs_in_tf_data(policy, shape):
    images = np.random.default_rng(0).random((4, *shape)).astype(np.float32)
    augment = build_augmenter(policy, shape, seed=0)
    out = np.stack(
        list(tf.data.Dataset.from_tensor_slices(images).map(augment).as_numpy_iterator())
    )
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    if policy == "none":
        np.testing.assert_array_equal(out, images)
