"""``load_image_task``: image data from Python in one call (issue 24, item 3).

Real Fashion-MNIST (Debian's ``dataset-fashion-mnist`` files); CIFAR-10 and ImageNet from an
empty tfds ``data_dir``, which must fail saying how to prepare them.
"""

from __future__ import annotations

import numpy as np
import pytest

from adv_large_batch.conadv.inputs import check_pixel_range
from adv_large_batch.data.image_datasets import DATASETS, FASHION_MNIST_DIR
from adv_large_batch.data.image_tasks import load_image_task
from adv_large_batch.flags import ConfigError

needs_fashion_mnist = pytest.mark.skipif(
    not __import__("os").path.isdir(FASHION_MNIST_DIR), reason="dataset-fashion-mnist missing"
)


@needs_fashion_mnist
def test_fashion_mnist_arrays_go_straight_to_fit():
    task = load_image_task("fashion_mnist", limit=256)
    for x, y in (task.train, task.test):
        assert x.shape == (256, 28, 28, 1) and x.dtype == np.float32
        assert y.shape == (256,) and y.dtype == np.int32
        assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.5  # uint8 / 255
        assert set(np.unique(y)) <= set(range(10))
    assert (task.name, task.num_classes, task.image_shape) == ("fashion_mnist", 10, (28, 28, 1))
    assert task.class_names[0] == "t-shirt/top"
    check_pixel_range(task.x_train)  # what ConAdv takes


@needs_fashion_mnist
def test_the_limit_takes_the_first_examples_and_is_capped_by_the_split():
    small = load_image_task("fashion_mnist", limit=3)
    larger = load_image_task("fashion_mnist", limit=20_000)
    np.testing.assert_array_equal(small.x_train, larger.x_train[:3])
    assert len(larger.x_train) == 20_000 and len(larger.x_test) == 10_000  # test has 10,000


@pytest.mark.parametrize("limit", [0, -5, 2.5, True, "256"])
def test_a_bad_limit_is_refused_naming_limit(limit):
    with pytest.raises(ConfigError) as err:
        load_image_task("fashion_mnist", limit=limit)
    assert "limit=" in str(err.value) and repr(limit) in str(err.value)


def test_an_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        load_image_task("mnist")
    assert "'mnist'" in str(err.value)
    assert all(name in str(err.value) for name in DATASETS)


@pytest.mark.parametrize("name", ["cifar10", "imagenet2012"])
def test_tfds_data_not_prepared_fails_saying_how_to_prepare_it(name, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_image_task(name, data_dir=str(tmp_path))
    message = str(err.value)
    assert "not prepared" in message and f"tfds build {name}" in message
    assert str(tmp_path) in message and "data_dir=" in message


def test_missing_fashion_mnist_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_image_task("fashion_mnist", data_dir=str(tmp_path))
