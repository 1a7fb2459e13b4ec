"""Image folders and GLUE TSV files as found in the wild (issue 23, item 4).

ImageNet has grayscale and CMYK JPEGs and a PNG named ``.JPEG``: they train.  A
truncated JPEG, a text file named ``.JPEG``, an empty file and stray files
(``.DS_Store``) are left out before training and counted; a file that only fails
when decoded inside the pipeline is trained as a black image and counted; a TSV row
with a byte that is not UTF-8 is skipped and counted.  Real files (Pillow, raw
bytes), no mocks.
"""

import io
import json
import os
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from adv_large_batch import cli
from adv_large_batch.data import image_folders, image_pipeline, image_splits, text_tasks
from adv_large_batch.flags import ConfigError


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def picture(seed: int, size=(12, 10)) -> Image.Image:
    """An RGB image of ``size`` (width, height); its mean colour says which it is."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def wild_folder(root, size=(12, 10), per_class=4):
    """train/{a,b}/ of ``per_class`` good RGB JPEGs each, plus the ImageNet oddities in
    class a, and test/{a,b}/ of one JPEG each.  Returns (good oddities, bad files by kind)."""
    for c, name in enumerate("ab"):
        for i in range(per_class):
            write(root / "train" / name / f"{i}.JPEG", jpeg(picture(10 * c + i, size)))
        write(root / "test" / name / "0.JPEG", jpeg(picture(100 + c, size)))
    a = root / "train" / "a"
    good = {
        "gray": write(a / "gray.JPEG", jpeg(picture(50, size).convert("L"))),
        "cmyk": write(a / "cmyk.JPEG", jpeg(picture(51, size).convert("CMYK"))),
        "png": write(a / "png.JPEG", png(picture(52, size))),  # ImageNet's n02105855_2933
    }
    whole = jpeg(picture(53, size))
    bad = {
        "damaged": write(a / "truncated.JPEG", whole[: len(whole) // 2]),
        "not an image": write(a / "text.JPEG", b"<html>404 Not Found</html>\n"),
        "empty": write(a / "empty.jpg", b""),
        "stray": write(a / ".DS_Store", b"\x00\x00\x00\x01Bud1" + bytes(100)),
    }
    return good, bad


def test_the_oddities_train_and_the_damaged_files_are_left_out_and_named(tmp_path):
    _, bad = wild_folder(tmp_path)
    for limit in (None, 0):  # in memory, and read per example
        data = image_folders.load_folder(str(tmp_path), 8, in_memory_bytes=limit)
        assert data.source == ("files" if limit == 0 else "memory")
        # 4 + 4 good RGB JPEGs, the grayscale and CMYK JPEGs and the PNG named .JPEG.
        assert (data.num_train, data.num_test) == (11, 2)
        report = data.skipped_files.summary()
        assert report["count"] == 4
        assert report["by_kind"] == {kind: 1 for kind in bad}
        named = " ".join(report["examples"])
        assert all(path in named for path in bad.values())
        assert "does not decode: jpeg::Uncompress failed" in named
        assert report["substituted"]["count"] == 0
        line = data.skipped_files.line(examples=4)
        assert line.startswith("skipped 4 file(s) of the image folder (") and bad["stray"] in line
        # Every kept image decodes as RGB, the oddities included.
        shapes = [x.shape for x, _ in data.train.as_numpy_iterator()]
        assert len(shapes) == 11 and all(s == (10, 12, 3) for s in shapes)


def test_a_native_size_folder_decodes_every_image_with_the_first_ones_channels(tmp_path):
    # Native size (no --image-size): the grayscale and CMYK JPEGs become RGB like the rest.
    wild_folder(tmp_path)
    for limit in (None, 0):
        data = image_folders.load_folder(str(tmp_path), in_memory_bytes=limit)
        assert data.image_shape == (10, 12, 3) and data.num_train == 11
        assert data.skipped_files.summary()["count"] == 4
        shapes = [x.shape for x, _ in data.train.as_numpy_iterator()]
        assert len(shapes) == 11 and all(s == (10, 12, 3) for s in shapes)


def test_the_resumable_stream_runs_over_a_damaged_folder_and_resumes_exactly(tmp_path):
    wild_folder(tmp_path)
    data = image_folders.load_folder(str(tmp_path), 8, in_memory_bytes=0)
    augment = image_pipeline.seeded_augmenter("flip_crop", data.image_shape, seed=1)

    def stream(start_step=0):
        return image_pipeline.train_stream(
            data.train, data.num_train, 4, 1, augment, start_step=start_step
        )

    whole = [b for _, b in zip(range(6), stream().as_numpy_iterator())]  # 2 per epoch, 3 epochs
    assert all(x.shape == (4, 8, 8, 3) for x, _ in whole)
    resumed = [b for _, b in zip(range(3), stream(3).as_numpy_iterator())]
    for (x, y), (x_ref, y_ref) in zip(resumed, whole[3:]):
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(x, x_ref)
    # Another load (another worker) keeps the same examples, in the same order.
    again = image_folders.load_folder(str(tmp_path), 8, in_memory_bytes=0)
    for (x, y), (x_ref, y_ref) in zip(again.train.as_numpy_iterator(), data.train):
        assert y == y_ref and np.array_equal(x, x_ref)


def test_a_file_that_fails_only_when_decoded_is_a_black_image_or_left_out(tmp_path, capsys):
    # A PNG with a flipped byte inside: it starts and ends as a PNG (the scan keeps it),
    # but its data chunk's checksum is wrong and the decode fails.
    for name in "ab":
        for i in range(3):
            write(tmp_path / name / f"{i}.png", png(picture(i, (16, 16))))
    broken = bytearray(png(picture(9, (16, 16))))
    broken[len(broken) // 2] ^= 0xFF
    bad = write(tmp_path / "a" / "-broken.png", bytes(broken))  # first in name order
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(bytes(broken))

    files = image_folders.load_folder(str(tmp_path), 8, in_memory_bytes=0)
    assert files.num_train == 7 and files.skipped_files.summary()["count"] == 0
    for _ in range(2):  # read twice: the same black image, named once
        images = [x for x, _ in files.train.as_numpy_iterator()]  # a/-broken, a/0-2, b/0-2
        assert images[0].shape == (8, 8, 3) and not images[0].any()
        assert all(x.any() for x in images[1:])
    assert not tf.data.experimental.at(files.train, 0)[0].numpy().any()  # random access too
    assert files.skipped_files.summary()["substituted"] == {"count": 1, "examples": [bad]}
    assert capsys.readouterr().err.count(f"{bad} does not decode") == 1
    # The resumable stream reads it too, and resumes exactly (7 images: 1 step of 7 an epoch).
    augment = image_pipeline.seeded_augmenter("none", files.image_shape)
    whole = list(image_pipeline.train_stream(files.train, 7, 7, 0, augment).take(3))
    resumed = list(image_pipeline.train_stream(files.train, 7, 7, 0, augment, start_step=1).take(2))
    for (x, y), (x_ref, y_ref) in zip(resumed, whole[1:]):
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(x, x_ref)
    assert sum(not x.numpy().any() for x in whole[0][0]) == 1  # the black image, once a step

    for size in (8, None):  # decoded before training (in memory): left out, counted once
        memory = image_folders.load_folder(str(tmp_path), size)
        assert memory.source == "memory" and memory.num_train == 6
        assert memory.skipped_files.summary()["by_kind"] == {"damaged": 1}
    # Native size, read per example: the first image (it sets the shape) decodes before
    # training; a file after it is decoded only when read, by the fixed-size decoder.
    native = image_folders.load_folder(str(tmp_path), in_memory_bytes=0)
    assert native.num_train == 6 and native.skipped_files.summary()["count"] == 1
    os.rename(bad, tmp_path / "a" / "9.png")
    native = image_folders.load_folder(str(tmp_path), in_memory_bytes=0)
    images = [x for x, _ in native.train.as_numpy_iterator()]  # a/0-2, a/9, b/0-2
    assert len(images) == 7 and [i for i, x in enumerate(images) if not x.any()] == [3]
    assert native.skipped_files.summary()["substituted"]["count"] == 1


def test_a_class_without_a_usable_image_is_refused_with_the_file_named(tmp_path):
    write(tmp_path / "a" / "0.jpg", jpeg(picture(0)))
    write(tmp_path / "b" / "0.jpg", b"GIF89a but not really")
    with pytest.raises(ConfigError, match=r"class folder\(s\) \[.b.\].*b/0\.jpg \(damaged: does"):
        image_folders.load_folder(str(tmp_path), 8)


@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_train_images_skips_damaged_files_and_reports_them(tmp_path, capsys, monkeypatch, streamed):
    """Before: the streamed run died in its first epoch (DecodeImage InvalidArgumentError)."""
    _, bad = wild_folder(tmp_path / "data", size=(16, 16))
    metrics = tmp_path / "metrics.json"
    size = []
    if streamed:  # read per example at an --image-size, as an ImageNet folder is
        monkeypatch.setattr(image_splits, "IN_MEMORY_BYTES", 0)
        size = ["--image-size", "16"]
    code = cli.main(
        [
            "train-images", "--dataset", "folder", "--data-dir", str(tmp_path / "data"),
            "--model", "cifar_resnet8", "--width", "4", "--method", "baseline",
            "--batch-size", "4", "--epochs", "1", "--verbose", "1", *size,
            "--metrics-out", str(metrics),
        ]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(metrics.read_text())
    assert result["steps"] == 2  # 11 training images, batch 4
    assert result["skipped_files"]["count"] == 4
    assert result["skipped_files"]["by_kind"] == {kind: 1 for kind in bad}
    assert result["skipped_files"]["substituted"]["count"] == 0
    assert "[train-images] skipped 4 file(s) of the image folder" in out
    assert bad["damaged"] in out and bad["not an image"] in out


# ---- GLUE TSV -----------------------------------------------------------------------------------
def test_a_tsv_row_with_a_byte_that_is_not_utf8_is_skipped_and_counted(tmp_path):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "train.tsv").write_bytes(
        b"sentence\tlabel\n"
        b"a fine film\t1\n"
        b"caf\xe9 latte , bitter\t0\n"  # Latin-1, not UTF-8
        b"na\xc3\xafve but good\t1\n"  # UTF-8: kept
        b"dull\t0\n"
    )
    (folder / "dev.tsv").write_bytes(b"sentence\tlabel\ngreat\t1\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = text_tasks.load_task("sst2", "tsv", str(tmp_path))
    assert task.train.texts[0] == ["a fine film", "na\u00efve but good", "dull"]
    assert task.train.labels.tolist() == [1, 1, 0]
    assert task.skipped_rows == {"train": 1}
    (message,) = [str(w.message) for w in caught]
    assert "train.tsv: skipped 1 malformed row(s) of 4" in message
    assert "1 with bytes that are not UTF-8; first at line 3" in message
