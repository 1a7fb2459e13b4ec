"""The image input without TensorFlow (``image_arrays``, ``numpy_images``): the layout of
``train_stream``'s random-access path, exact resumes, ConAdv's pairing, the stateless
augmentation, the CIFAR-10 pickles and image folders (real files written here), and a
subprocess in which ``import tensorflow`` fails.

Real Fashion-MNIST images (Debian's ``dataset-fashion-mnist``) where present, else random
ones.  No test imports TensorFlow: the constants restated from TensorFlow modules are
compared with those modules' source, read with ``ast``.
"""

from __future__ import annotations

import ast
import gzip
import io
import json
import os
import pickle
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adv_large_batch.data import image_arrays, numpy_images
from adv_large_batch.data.image_arrays import (
    FASHION_MNIST_DIR,
    ImageArrays,
    MissingDataError,
    load_cifar10_arrays,
    load_folder_arrays,
    load_image_arrays,
    read_idx,
    resize_central,
)
from adv_large_batch.data.numpy_images import (
    IMAGES,
    NEXT_IMAGES,
    NEXT_LABELS,
    augment_keys,
    epoch_order,
    eval_image_batches,
    flip_pad_crop,
    image_batches,
    numpy_augmenter,
)
from adv_large_batch.flags import ConfigError

REPO = Path(__file__).parent.parent.parent
HAS_FASHION_MNIST = os.path.isdir(FASHION_MNIST_DIR)


@pytest.fixture(scope="module")
def real_images() -> np.ndarray:
    """100 uint8 [28, 28, 1] images: Fashion-MNIST's first, else random."""
    if HAS_FASHION_MNIST:
        return image_arrays.load_fashion_mnist_arrays().train_images[:100]
    return np.random.default_rng(0).integers(0, 256, (100, 28, 28, 1), dtype=np.uint8)


def take(stream, n: int) -> list:
    return [next(stream) for _ in range(n)]


# ---- order and layout -------------------------------------------------------------------------
def test_epoch_order_is_a_seeded_permutation_of_every_example():
    order = epoch_order(7, 0, 1000)
    np.testing.assert_array_equal(np.sort(order), np.arange(1000))
    np.testing.assert_array_equal(order, epoch_order(7, 0, 1000))  # pure
    assert not np.array_equal(order, epoch_order(7, 1, 1000))  # another epoch
    assert not np.array_equal(order, epoch_order(8, 0, 1000))  # another seed
    assert not np.array_equal(order, np.arange(1000))


def test_two_workers_slices_make_one_workers_global_batch_across_epochs(real_images):
    """N = 100, global batch 16: 6 steps an epoch (4 examples dropped); steps 0..14 span
    three epochs.  Labels are the example indices, so each batch names its examples."""
    index = np.arange(100, dtype=np.int32)
    one = take(image_batches(real_images, index, 16, seed=3), 15)
    ranks = [take(image_batches(real_images, index, 8, 3, rank=r, size=2), 15) for r in (0, 1)]
    for step in range(15):
        epoch, in_epoch = divmod(step, 6)
        expected = epoch_order(3, epoch, 100)[in_epoch * 16 : (in_epoch + 1) * 16]
        np.testing.assert_array_equal(one[step][1], expected)
        np.testing.assert_array_equal(
            np.concatenate([ranks[0][step][1], ranks[1][step][1]]), one[step][1]
        )
        x = np.concatenate([ranks[0][step][0], ranks[1][step][0]])
        np.testing.assert_array_equal(x, real_images[expected].astype(np.float32) / 255)
        assert x.dtype == np.float32 and one[step][1].dtype == np.int32
    for epoch in range(2):  # an epoch never repeats an example; the last 4 are dropped
        seen = np.concatenate([one[s][1] for s in range(6 * epoch, 6 * epoch + 6)])
        np.testing.assert_array_equal(seen, epoch_order(3, epoch, 100)[:96])


@pytest.mark.parametrize("staleness", [0, 1, 2])
def test_a_resumed_stream_equals_the_uninterrupted_one(real_images, staleness):
    labels = np.arange(100, dtype=np.int32) % 10
    args = (real_images, labels, 8, 5)
    kwargs = {"rank": 1, "size": 2, "augment": flip_pad_crop, "staleness": staleness}
    whole = take(image_batches(*args, **kwargs), 14)
    for start in (4, 6, 9):  # mid-epoch, at the boundary (6 steps an epoch), the next epoch
        resumed = take(image_batches(*args, start_step=start, **kwargs), 14 - start)
        for a, b in zip(whole[start:], resumed):
            features_a, features_b = (a[0], b[0]) if staleness else ({"x": a[0]}, {"x": b[0]})
            assert features_a.keys() == features_b.keys()
            for key in features_a:
                np.testing.assert_array_equal(features_a[key], features_b[key])
            np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("staleness", [1, 2])
def test_pairing_puts_batch_t_plus_tau_beside_batch_t_computing_each_once(real_images, staleness):
    labels = np.arange(100, dtype=np.int32)
    calls = []

    def counting(image: np.ndarray, key: int) -> np.ndarray:
        calls.append(key)
        return flip_pad_crop(image, key)

    plain = take(image_batches(real_images, labels, 10, 1, augment=flip_pad_crop), 8)
    paired = take(
        image_batches(real_images, labels, 10, 1, augment=counting, staleness=staleness), 5
    )
    assert len(calls) == (5 + staleness) * 10  # every batch augmented once
    for t, (features, y_t) in enumerate(paired):
        assert set(features) == {IMAGES, NEXT_IMAGES, NEXT_LABELS}
        np.testing.assert_array_equal(features[IMAGES], plain[t][0])
        np.testing.assert_array_equal(y_t, plain[t][1])
        np.testing.assert_array_equal(features[NEXT_IMAGES], plain[t + staleness][0])
        np.testing.assert_array_equal(features[NEXT_LABELS], plain[t + staleness][1])
    assert not paired[0][0][IMAGES].flags.writeable  # handed out twice: read-only


# ---- augmentation -----------------------------------------------------------------------------
def reference_flip_pad_crop(image: np.ndarray, key: int) -> np.ndarray:
    """``flip_pad_crop`` written the obvious way (np.pad, then a slice)."""
    height, width = image.shape[:2]
    pad_h, pad_w = max(1, height // 8), max(1, width // 8)
    top = ((key >> 32) & 0x7FFFFFFF) % (2 * pad_h + 1)
    left = (key & 0xFFFFFFFF) % (2 * pad_w + 1)
    image = image[:, ::-1] if key >> 63 else image
    padded = np.pad(image, ((pad_h, pad_h), (pad_w, pad_w), (0, 0)))
    return padded[top : top + height, left : left + width]


def test_flip_pad_crop_is_keyed_keeps_shape_and_range_and_moves_pixels(real_images):
    images = real_images[:64].astype(np.float32) / 255
    keys = augment_keys(0, 0, np.arange(64))
    out = [flip_pad_crop(image, int(key)) for image, key in zip(images, keys)]
    again = [flip_pad_crop(image, int(key)) for image, key in zip(images, keys)]
    for image, key, a, b in zip(images, keys, out, again):
        np.testing.assert_array_equal(a, b)  # a pure function of (image, key)
        np.testing.assert_array_equal(a, reference_flip_pad_crop(image, int(key)))
        assert a.shape == image.shape and a.dtype == np.float32 and 0 <= a.min() <= a.max() <= 1
    flips = sum(int(k) >> 63 for k in keys)
    assert 16 <= flips <= 48  # about half the images flipped
    offsets = {(int(k) >> 32 & 0x7FFFFFFF) % 7 for k in keys}
    assert offsets == set(range(7))  # every vertical offset of 28 px (pad 3) drawn
    assert sum(not np.array_equal(a, image) for a, image in zip(out, images)) >= 56


def test_augment_keys_are_a_pure_function_of_seed_epoch_and_index():
    keys = augment_keys(1, 2, np.arange(1000))
    assert keys.dtype == np.uint64 and len(set(keys.tolist())) == 1000
    np.testing.assert_array_equal(keys, augment_keys(1, 2, np.arange(1000)))
    np.testing.assert_array_equal(keys[[5, 3]], augment_keys(1, 2, [5, 3]))
    for other in (augment_keys(0, 2, np.arange(1000)), augment_keys(1, 3, np.arange(1000))):
        assert np.mean(other == keys) < 0.01
    bits = np.unpackbits(keys.view(np.uint8))
    assert 0.45 < bits.mean() < 0.55


def test_the_stream_augments_example_i_of_epoch_e_with_its_key(real_images):
    labels = np.arange(100, dtype=np.int32)
    batches = take(image_batches(real_images, labels, 25, 9, augment=flip_pad_crop), 8)
    for step, (x, y) in enumerate(batches):
        keys = augment_keys(9, step // 4, y)
        for image, index, key in zip(x, y, keys):
            expected = flip_pad_crop(real_images[index].astype(np.float32) / 255, int(key))
            np.testing.assert_array_equal(image, expected)
    assert numpy_augmenter("flip_crop") is flip_pad_crop and numpy_augmenter("none") is None
    with pytest.raises(ConfigError, match=r"--augment must be one of .*'randaugment'"):
        numpy_augmenter("randaugment")


# ---- evaluation and errors --------------------------------------------------------------------
def test_eval_batches_cover_the_split_in_order_with_a_smaller_last_batch(real_images):
    labels = np.arange(100, dtype=np.int32)
    batches = eval_image_batches(real_images, labels, 32)
    assert len(batches) == 4 and [len(y) for _, y in batches] == [32, 32, 32, 4]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels)
    x = np.concatenate([x for x, _ in batches])
    np.testing.assert_array_equal(x, real_images.astype(np.float32) / 255)
    assert x.dtype == np.float32 and len(list(batches)) == 4  # re-iterable


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
        ({"rank": 2, "size": 2}, r"rank must be an integer in \[0, 2\) \(size=2\), got 2"),
        ({"rank": -1}, r"rank must be an integer in \[0, 1\)"),
        ({"size": 0}, r"size must be an integer >= 1, got 0"),
        ({"batch_size": 6, "size": 2}, r"global batch 12 .* larger than the 10 training"),
        ({"staleness": -1}, r"staleness must be an integer >= 0, got -1"),
        ({"start_step": -3}, r"start_step must be an integer >= 0, got -3"),
        ({"augment": "flip"}, r"augment must be None or a function"),
    ],
)
def test_bad_stream_arguments_are_refused_before_any_work(kwargs, message):
    args = {"batch_size": 2, "seed": 0, **kwargs}
    with pytest.raises(ConfigError, match=message):
        image_batches(np.zeros((10, 4, 4, 1), np.uint8), np.zeros(10, np.int32), **args)


def test_bad_arrays_are_refused():
    with pytest.raises(ConfigError, match=r"images must be uint8 \[N, H, W, C\], got float32"):
        image_batches(np.zeros((10, 4, 4, 1), np.float32), np.zeros(10), 2, 0)
    with pytest.raises(ConfigError, match=r"labels must have shape \[10\], got \(9,\)"):
        image_batches(np.zeros((10, 4, 4, 1), np.uint8), np.zeros(9), 2, 0)
    with pytest.raises(ConfigError, match="batch_size must be an integer >= 1, got 0"):
        eval_image_batches(np.zeros((10, 4, 4, 1), np.uint8), np.zeros(10), 0)


def assigned(path: Path, name: str) -> object:
    """The literal a module assigns to ``name`` (also in a tuple assignment), read from source."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                names = target.elts if isinstance(target, ast.Tuple) else [target]
                for i, element in enumerate(names):
                    if isinstance(element, ast.Name) and element.id == name:
                        value = ast.literal_eval(node.value)
                        return value[i] if isinstance(target, ast.Tuple) else value
    raise AssertionError(f"{path} assigns no {name}")


def test_restated_constants_equal_the_tensorflow_modules():
    data = REPO / "adv_large_batch" / "data"
    conadv = REPO / "adv_large_batch" / "conadv"  # pairing's keys (maybe from paired_keys)
    home = next(p for p in (conadv / "paired_keys.py", conadv / "pairing.py") if p.exists())
    for name in ("IMAGES", "NEXT_IMAGES", "NEXT_LABELS"):
        assert assigned(home, name) == getattr(numpy_images, name)
    for name in ("IMAGE_EXTENSIONS", "HOLDOUT_EVERY"):
        assert assigned(data / "image_splits.py", name) == getattr(image_arrays, name)
    assert assigned(data / "augment.py", "CENTRAL_FRACTION") == image_arrays.CENTRAL_FRACTION
    tree = ast.parse((data / "augment.py").read_text())
    source = next(n for n in tree.body if getattr(n, "name", None) == "crop_padding")
    namespace: dict = {}
    exec(compile(ast.Module([source], []), "augment.py", "exec"), namespace)
    for size in range(1, 300):
        assert namespace["crop_padding"](size) == numpy_images.crop_padding(size)
    # read_idx and the Fashion-MNIST constants live in image_arrays only
    body = ast.parse((data / "image_datasets.py").read_text()).body
    defined = {getattr(n, "name", None) for n in body} | {
        t.id for n in body if isinstance(n, ast.Assign) for t in n.targets if hasattr(t, "id")
    }
    assert not defined & {"read_idx", "FASHION_MNIST_DIR", "FASHION_MNIST_CLASSES"}
    assert "TFDS_SPLITS" in defined and "load_fashion_mnist" in defined  # the walk sees them


# ---- Fashion-MNIST ----------------------------------------------------------------------------
def test_read_idx_parses_a_hand_written_file(tmp_path):
    values = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in values.shape)
    path = str(tmp_path / "x-idx3-ubyte.gz")
    with gzip.open(path, "wb") as f:
        f.write(header + values.tobytes())
    np.testing.assert_array_equal(read_idx(path), values)


@pytest.mark.skipif(not HAS_FASHION_MNIST, reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_arrays_from_the_debian_files():
    data = load_image_arrays("fashion_mnist")
    assert (data.num_train, data.num_test, data.num_classes) == (60000, 10000, 10)
    assert data.image_shape == (28, 28, 1) and data.class_names[9] == "ankle boot"
    assert data.train_images.dtype == np.uint8 and data.train_labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(data.train_labels), [6000] * 10)
    assert data.limit(train=100, test=20).num_train == 100


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_image_arrays("fashion_mnist", str(tmp_path))


# ---- CIFAR-10 ---------------------------------------------------------------------------------
def cifar_pixel(n: int, y: int, x: int, c: int) -> int:
    return (n * 7 + y * 3 + x * 5 + c * 50) % 256


def write_cifar(folder: Path, per_batch: int = 3) -> None:
    """A ``cifar-10-batches-py`` folder in the real format: pickled dicts with bytes keys,
    ``data`` uint8 [N, 3072] (red, green, blue planes, row-major), ``labels`` a list."""
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        n = np.arange(b * per_batch, (b + 1) * per_batch)
        image = np.fromfunction(
            lambda i, y, x, c: cifar_pixel(n[i.astype(int)], y, x, c), (len(n), 32, 32, 3)
        )
        planes = image.astype(np.uint8).transpose(0, 3, 1, 2).reshape(len(n), 3072)
        batch = {
            b"batch_label": f"batch {b}".encode(),
            b"labels": [int(i) % 10 for i in n],
            b"data": planes,
            b"filenames": [f"{i}.png".encode() for i in n],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar10_from_the_python_pickles(tmp_path):
    write_cifar(tmp_path / "cifar-10-batches-py")
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the folder or its parent
        data = load_cifar10_arrays(str(data_dir))
        assert (data.num_train, data.num_test, data.image_shape) == (15, 3, (32, 32, 3))
        assert data.class_names == tuple(f"class{i}" for i in range(10))
        np.testing.assert_array_equal(data.train_labels, np.arange(15) % 10)
        np.testing.assert_array_equal(data.test_labels, np.arange(15, 18) % 10)
        n, y, x, c = 16, 3, 30, 2  # test image 1: the 17th written
        assert data.test_images[1, y, x, c] == cifar_pixel(n, y, x, c)
        assert data.train_images[4, 31, 0, 0] == cifar_pixel(4, 31, 0, 0)
    assert load_image_arrays("cifar10", str(tmp_path), image_size=16).image_shape == (16, 16, 3)


def test_cifar10_missing_or_foreign_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"CIFAR-10 not found in '.*nowhere'.*data_batch_1"):
        load_cifar10_arrays(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError, as the tfds loader's
        load_cifar10_arrays(str(tmp_path / "nowhere"))
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="lacks data_batch_3"):
        load_cifar10_arrays(str(tmp_path))
    (folder / "data_batch_3").write_bytes(pickle.dumps(OrderedDict(a=1), protocol=2))
    with pytest.raises(ConfigError, match="data_batch_3 is not a CIFAR-10 .*collections"):
        load_cifar10_arrays(str(tmp_path))  # a global outside NumPy's arrays is never loaded


# ---- image folders ----------------------------------------------------------------------------
def encoded(array: np.ndarray, kind: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, kind)
    return out.getvalue()


def colour(i: int, shape=(5, 6, 3)) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8)


def wild_folder(root: Path) -> None:
    """cat/: 11 good PNGs (the 10th held out) and a truncated JPEG; dog/: 2 PNGs, a grey
    PNG, an empty file, a text file named .jpg and a .DS_Store."""
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    for i in range(11):
        (root / "cat" / f"c{i:02d}.png").write_bytes(encoded(colour(i)))
    whole = encoded(colour(99, (64, 64, 3)), "JPEG")
    (root / "cat" / "zz_truncated.jpg").write_bytes(whole[: len(whole) // 2])
    for i in range(2):
        (root / "dog" / f"d{i}.png").write_bytes(encoded(colour(20 + i)))
    (root / "dog" / "d2.png").write_bytes(encoded(colour(22, (5, 6))))  # grey
    (root / "dog" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "notes.jpg").write_bytes(b"<html>404 Not Found</html>\n")
    (root / "dog" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def test_image_folder_left_out_files_are_skipped_and_reported(tmp_path):
    wild_folder(tmp_path)
    data = load_folder_arrays(str(tmp_path))
    assert data.class_names == ("cat", "dog") and data.image_shape == (5, 6, 3)
    assert (data.num_train, data.num_test) == (13, 1)  # c09 is every 10th: held out
    np.testing.assert_array_equal(data.train_labels, [0] * 10 + [1] * 3)
    np.testing.assert_array_equal(data.test_images[0], colour(9))
    np.testing.assert_array_equal(data.train_images[9], colour(10))
    np.testing.assert_array_equal(data.train_images[10], colour(20))
    np.testing.assert_array_equal(
        data.train_images[12], np.repeat(colour(22, (5, 6))[..., None], 3, -1)
    )
    kinds = {os.path.basename(path): kind for path, kind, _ in data.skipped}
    assert kinds == {
        "zz_truncated.jpg": "damaged",
        "empty.jpg": "empty",
        "notes.jpg": "not an image",
        ".DS_Store": "stray",
    }
    assert data.skipped_line().startswith("skipped 4 file(s) of the image folder")
    crops = load_image_arrays("folder", str(tmp_path), image_size=4)
    assert crops.train_images.shape == (13, 4, 4, 3) and crops.test_images.shape == (1, 4, 4, 3)


def test_image_folder_with_train_and_test_folders(tmp_path):
    for split, count in (("train", 3), ("test", 2)):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(count):
                (tmp_path / split / c / f"{i}.png").write_bytes(
                    encoded(colour(i, (4, 4, 1))[..., 0])
                )
    data = load_folder_arrays(str(tmp_path))
    assert (data.num_train, data.num_test, data.image_shape) == (6, 4, (4, 4, 1))
    np.testing.assert_array_equal(data.test_labels, [0, 0, 1, 1])


def test_image_folder_errors_name_the_files(tmp_path):
    with pytest.raises(MissingDataError, match=r"image folder '.*missing' does not exist"):
        load_folder_arrays(str(tmp_path / "missing"))
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(b"not a png at all")
    with pytest.raises(ConfigError, match=r"no usable training image in class folder\(s\) \['a'\]"):
        load_folder_arrays(str(tmp_path))  # nothing readable: refused, the file named
    (tmp_path / "a" / "1.png").write_bytes(encoded(colour(1)))
    (tmp_path / "a" / "2.png").write_bytes(encoded(colour(2, (7, 6, 3))))
    with pytest.raises(ConfigError, match=r"mixed sizes: .*1.png is 5x6x3 but .*2.png is 7x6x3"):
        load_folder_arrays(str(tmp_path))
    assert load_folder_arrays(str(tmp_path), image_size=3).image_shape == (3, 3, 3)


def test_resize_central_takes_the_evaluation_crop():
    image = np.zeros((8, 16, 1), np.uint8)
    image[:, 8:] = 200  # left half black, right half grey
    crop = resize_central(image, 4)  # resized to 5x9 (4 / 0.875), central 4x4 of columns 2..5
    assert crop.shape == (4, 4, 1) and crop[0, 0, 0] == 0 and crop[0, 3, 0] == 200
    flat = resize_central(np.full((10, 7, 3), 77, np.uint8), (5, 3))
    assert flat.shape == (5, 3, 3) and np.all(flat == 77)


def test_image_arrays_checks_its_arrays():
    with pytest.raises(ConfigError, match=r"demo train labels must be int32 \[2\]"):
        ImageArrays(
            "demo",
            np.zeros((2, 3, 3, 1), np.uint8),
            np.zeros(2),
            np.zeros((0, 3, 3, 1), np.uint8),
            np.zeros(0, np.int32),
            ("a",),
        )


# ---- no TensorFlow ------------------------------------------------------------------------------
NO_TENSORFLOW_RUN = """
import json, os, sys
sys.path.insert(0, os.path.join("tests", "workers"))
import no_tensorflow
no_tensorflow.block()
try:
    import tensorflow  # noqa: F401
    blocked = False
except ImportError:
    blocked = True
import numpy as np
from adv_large_batch.data import image_arrays, numpy_images
folder = sys.argv[1]
if os.path.isdir(image_arrays.FASHION_MNIST_DIR):
    data = image_arrays.load_image_arrays("fashion_mnist").limit(train=2000)
else:
    data = image_arrays.load_image_arrays("folder", folder)
pairs = numpy_images.image_batches(data.train_images, data.train_labels, 8, 0,
                                   augment=numpy_images.flip_pad_crop, staleness=1)
shapes = [list(next(pairs)[0]["next_images"].shape) for _ in range(3)]
folder_data = image_arrays.load_image_arrays("folder", folder, image_size=4)
evals = len(numpy_images.eval_image_batches(folder_data.test_images, folder_data.test_labels, 2))
print(json.dumps({"blocked": blocked, "shapes": shapes, "name": data.name,
                  "folder": folder_data.num_train, "evals": evals,
                  "tensorflow": sorted(m for m in sys.modules if m.split(".")[0] == "tensorflow")}))
"""


def test_the_numpy_input_runs_where_tensorflow_cannot_be_imported(tmp_path):
    wild_folder(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", NO_TENSORFLOW_RUN, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["blocked"] and result["tensorflow"] == []
    height = 28 if HAS_FASHION_MNIST else 5
    assert result["shapes"][0][:2] == [8, height] and len(result["shapes"]) == 3
    assert result["folder"] == 13 and result["evals"] == 1
