"""Tests for `mtlgen_jax.data`: embedded builders, catalog, folders, pipeline."""

import logging
import os
import time

import _data
import chex
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mtlgen_jax import data
from mtlgen_jax.data import folder as folder_lib
from mtlgen_jax.data import photo_patches


def make_config(name, data_dir=None, **overrides):
    config = ml_collections.ConfigDict(
        {
            "name": name,
            "data_dir": str(data_dir) if data_dir else None,
            "image_size": 16,
            "folder": "",
            "channels": None,
            "train_split": "train",
            "test_split": "test",
            "shuffle_buffer": 10_000,
            "test_fraction": 0.2,
        }
    )
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def data_dir():
    """The run's TFDS data dir (tests/_data.py), each embedded dataset prepared there; the
    determinism test prepares a second copy in a fresh directory."""
    path = _data.shared()
    for name in data.EMBEDDED:
        data.get_info(make_config(name, path))
    return path


def iterator(config, split="train", **kwargs):
    kwargs.setdefault("process_index", 0)
    kwargs.setdefault("process_count", 1)
    return data.create_iterator(config, split, **kwargs)


def read_split(builder, split):
    """All examples of a prepared split, in stored order, as numpy arrays."""
    ds = tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False, batch_size=-1))
    return ds


def rows(images):
    """Images as a sorted list of bytes: a multiset, to compare example sets."""
    return sorted(image.tobytes() for image in images)


def eval_images(config, split, batch_size, **kwargs):
    batches = list(iterator(config, split, batch_size=batch_size, seed=0, shuffle=False,
                            repeat=False, **kwargs))  # fmt: skip
    images = np.concatenate([b["image"][b["mask"]] for b in batches])
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    return batches, images, labels


# ----------------------------------------------------------------- builders


def test_embedded_names():
    assert data.EMBEDDED == ("digits", "photo_patches")


def test_digits_builder(data_dir):
    builder = data.MtlgenDigits(data_dir=str(data_dir))
    train, test = read_split(builder, "train"), read_split(builder, "test")
    assert len(train["label"]) + len(test["label"]) == 1797
    assert (len(train["label"]), len(test["label"])) == (1438, 359)
    for split in (train, test):
        chex.assert_shape(split["image"], (None, 8, 8, 1))
        chex.assert_type(split["image"], np.uint8)
        assert set(np.unique(split["label"])) == set(range(10))  # stratified: every class
    all_images = np.concatenate([train["image"], test["image"]])
    assert all_images.min() == 0 and all_images.max() == 255
    from sklearn.datasets import load_digits

    expected = np.round(load_digits().images * 255 / 16).astype(np.uint8)[..., None]
    assert rows(all_images) == rows(expected)


def test_photo_patches_builder_splits_by_photograph(data_dir):
    builder = data.MtlgenPhotoPatches(data_dir=str(data_dir))
    assert "label" not in builder.info.features
    train, test = read_split(builder, "train"), read_split(builder, "test")
    assert (len(train["image"]), len(test["image"])) == (12096, 1056)
    names = builder.info.features["photo"].names
    train_photos = {names[i] for i in np.unique(train["photo"])}
    test_photos = {names[i] for i in np.unique(test["photo"])}
    assert test_photos == {"chelsea", "coffee"}
    assert train_photos == set(photo_patches.TRAIN_PHOTOS)
    assert not train_photos & test_photos
    for split in (train, test):
        chex.assert_shape(split["image"], (None, 32, 32, 3))
        chex.assert_type(split["image"], np.uint8)
        assert split["image"].reshape(len(split["image"]), -1).std(axis=1).min() >= 3.0


@pytest.mark.parametrize("cls", [data.MtlgenDigits, data.MtlgenPhotoPatches])
def test_builders_are_deterministic(cls, data_dir, tmp_path):
    first, second = cls(data_dir=str(data_dir)), cls(data_dir=str(tmp_path))
    second.download_and_prepare()
    for split in ("train", "test"):
        a, b = read_split(first, split), read_split(second, split)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def test_get_info(data_dir):
    info = data.get_info(make_config("digits", data_dir, image_size=32))
    assert info == data.DatasetInfo("digits", 10, 1, 32, 1438, 359, "train", "test")
    info = data.get_info(make_config("photo_patches", data_dir, channels=1))
    assert (info.num_classes, info.channels, info.num_train, info.num_test) == (None, 1, 12096,
                                                                                1056)


# ----------------------------------------------------------------- pipeline


@pytest.mark.parametrize("name,channels", [("digits", 1), ("photo_patches", 3)])
@pytest.mark.parametrize("size", [16, 32])
def test_pipeline_shapes(data_dir, name, channels, size):
    config = make_config(name, data_dir, image_size=size, shuffle_buffer=512)
    batch = next(iterator(config, batch_size=8, seed=0))
    assert set(batch) == {"image", "label"}
    chex.assert_shape(batch["image"], (8, size, size, channels))
    chex.assert_type(batch["image"], np.uint8)
    chex.assert_shape(batch["label"], (8,))
    chex.assert_type(batch["label"], np.int32)
    if name == "digits":
        assert batch["label"].min() >= 0 and batch["label"].max() <= 9
        assert batch["image"].max() > 128  # still uint8 0..255 after resizing
    else:
        np.testing.assert_array_equal(batch["label"], 0)  # unlabelled


def test_channel_conversion(data_dir):
    gray = next(
        iterator(
            make_config("photo_patches", data_dir, channels=1, shuffle_buffer=64),
            batch_size=4,
            seed=0,
        )
    )
    chex.assert_shape(gray["image"], (4, 16, 16, 1))
    rgb = next(iterator(make_config("digits", data_dir, channels=3), batch_size=4, seed=0))
    chex.assert_shape(rgb["image"], (4, 16, 16, 3))
    np.testing.assert_array_equal(rgb["image"][..., 0], rgb["image"][..., 2])


def test_native_resolution_is_exact(data_dir):
    """At the stored size the pipeline returns the stored pixels unchanged."""
    config = make_config("digits", data_dir, image_size=8)
    _, images, _ = eval_images(config, "test", 100)
    stored = read_split(data.MtlgenDigits(data_dir=str(data_dir)), "test")["image"]
    assert rows(images) == rows(stored)


def test_eval_iterator_pads_and_keeps_every_example(data_dir):
    config = make_config("digits", data_dir, image_size=8)
    batches, images, labels = eval_images(config, "test", 100)
    assert len(batches) == 4  # ceil(359 / 100)
    assert [int(b["mask"].sum()) for b in batches] == [100, 100, 100, 59]
    chex.assert_shape(batches[-1]["image"], (100, 8, 8, 1))
    assert not batches[-1]["image"][59:].any() and not batches[-1]["label"][59:].any()
    stored = read_split(data.MtlgenDigits(data_dir=str(data_dir)), "test")
    assert rows(images) == rows(stored["image"])
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(stored["label"]))


def test_per_process_split_is_disjoint_and_complete(data_dir):
    config = make_config("digits", data_dir, image_size=8)
    _, full, _ = eval_images(config, "test", 64)
    parts = [eval_images(config, "test", 64, process_index=i, process_count=2) for i in range(2)]
    assert len(parts[0][0]) == len(parts[1][0])  # same number of batches: lockstep eval
    sizes = [len(p[1]) for p in parts]
    assert sizes == [180, 179]
    assert rows(np.concatenate([parts[0][1], parts[1][1]])) == rows(full)
    # Training iterators read the same halves: with batch = shard size, the
    # first batch is exactly one epoch of this process's shard.
    for i, size in enumerate(sizes):
        batch = next(iterator(config, "test", batch_size=size, seed=3, process_index=i,
                              process_count=2))  # fmt: skip
        assert rows(batch["image"]) == rows(parts[i][1])


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def test_seed_determines_the_batches(data_dir):
    config = make_config("photo_patches", data_dir, shuffle_buffer=512)
    a = take(iterator(config, batch_size=32, seed=1), 3)
    b = take(iterator(config, batch_size=32, seed=1), 3)
    c = take(iterator(config, batch_size=32, seed=2), 3)
    assert_same_batches(a, b)
    assert not np.array_equal(a[0]["image"], c[0]["image"])


def test_order_ignores_tensorflow_global_seed(data_dir):
    import tensorflow as tf

    config = make_config("digits", data_dir, image_size=8)
    a = take(iterator(config, batch_size=32, seed=1), 2)
    try:
        tf.random.set_seed(1234)
        b = take(iterator(config, batch_size=32, seed=1), 2)
    finally:
        tf.random.set_seed(None)
    assert_same_batches(a, b)


def test_epochs_are_reshuffled_permutations(data_dir):
    config = make_config("digits", data_dir, image_size=8)
    (epochs,) = take(iterator(config, "test", batch_size=2 * 359, seed=0), 1)
    first, second = epochs["image"][:359], epochs["image"][359:]
    assert rows(first) == rows(second)  # each epoch is the whole split once
    assert not np.array_equal(first, second)  # in a new order


@pytest.mark.parametrize("buffer", [10_000, 100])
def test_resume_equals_fresh_iterator(data_dir, buffer):
    # 1438 train examples / 64 = 22.5 batches an epoch: batch 22 straddles the
    # first epoch boundary, batch 30 lies inside the second epoch.
    config = make_config("digits", data_dir, shuffle_buffer=buffer)
    fresh = take(iterator(config, batch_size=64, seed=7), 32)
    for n in (1, 22, 23, 30):
        resumed = take(iterator(config, batch_size=64, seed=7, start_batch=n), 2)
        assert_same_batches(resumed, fresh[n : n + 2])


def test_resume_does_not_replay_epochs(data_dir):
    config = make_config("digits", data_dir)
    start = time.perf_counter()
    # 10**6 batches of 64 is ~44,500 epochs: replaying them would take hours.
    a = take(iterator(config, batch_size=64, seed=0, start_batch=10**6), 2)
    assert time.perf_counter() - start < 20
    b = take(iterator(config, batch_size=64, seed=0, start_batch=10**6 + 1), 1)
    assert_same_batches(a[1:], b)


def test_split_roles_and_split_strings(data_dir):
    config = make_config("digits", data_dir, image_size=8, test_split="train[:10%]")
    assert data.get_info(config).num_test == 144
    _, by_role, _ = eval_images(config, "test", 50)
    _, by_name, _ = eval_images(config, "train[:10%]", 50)
    assert len(by_role) == 144
    np.testing.assert_array_equal(by_role, by_name)
    with pytest.raises(ValueError, match="validation"):
        eval_images(config, "validation", 50)


def test_default_process_index_and_count(data_dir):
    batch = next(data.create_iterator(make_config("digits", data_dir), batch_size=4, seed=0))
    chex.assert_shape(batch["image"], (4, 16, 16, 1))


# ----------------------------------------------------------------- catalog


@pytest.mark.parametrize(
    "name,channels,out_channels,num_classes",
    [("cifar10", None, 3, 10), ("mnist", None, 1, 10), ("mnist", 3, 3, 10),
     ("celeb_a", None, 3, None)],  # celeb_a: 218x178 (non-square), no class label
)  # fmt: skip
def test_mock_catalog_dataset(tmp_path, name, channels, out_channels, num_classes):
    config = make_config(name, tmp_path, channels=channels)
    with tfds.testing.mock_data(num_examples=20):
        info = data.get_info(config)
        assert (info.num_classes, info.channels, info.num_train) == (num_classes, out_channels, 20)
        batches = take(iterator(config, batch_size=8, seed=0), 4)  # crosses epochs
        resumed = take(iterator(config, batch_size=8, seed=0, start_batch=2), 2)
    assert_same_batches(resumed, batches[2:])
    chex.assert_shape(batches[0]["image"], (8, 16, 16, out_channels))
    chex.assert_type(batches[0]["image"], np.uint8)
    chex.assert_type(batches[0]["label"], np.int32)
    if num_classes is None:
        assert all(not b["label"].any() for b in batches)
    else:
        assert all(0 <= b["label"].min() and b["label"].max() < num_classes for b in batches)


def test_unknown_name_error(tmp_path):
    with pytest.raises(ValueError, match="no_such_dataset_xyz") as e:
        data.get_info(make_config("no_such_dataset_xyz", tmp_path))
    message = str(e.value)
    assert "digits" in message and "photo_patches" in message
    assert "TFDS" in message and "data_dir" in message


def test_catalog_download_failure_says_how_to_fix(tmp_path, monkeypatch):
    def offline(self, *args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(RuntimeError, match=r"'mnist'.*no network.*dataset\.data_dir"):
        data.get_info(make_config("mnist", tmp_path))


@pytest.mark.parametrize(
    "field,value,match",
    [("image_size", 0, "image_size"), ("channels", 2, "channels"),
     ("shuffle_buffer", 0, "shuffle_buffer"), ("name", "", "name")],
)  # fmt: skip
def test_config_validation(tmp_path, field, value, match):
    config = make_config("digits", tmp_path)
    config[field] = value
    with pytest.raises(ValueError, match=match):
        data.get_info(config)


# ----------------------------------------------------------------- folders


def save(path, array, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for i in range(12):  # RGB, odd non-square sizes, nested folders
        save(
            str(root / f"sub{i % 3}" / f"rgb{i}.png"),
            rng.integers(0, 256, (17 + i, 23, 3), np.uint8),
        )
    save(str(root / "gray.jpg"), rng.integers(0, 256, (40, 21), np.uint8))  # grayscale 'L'
    save(str(root / "UPPER.JPEG"), rng.integers(0, 256, (9, 9, 3), np.uint8))
    save(str(root / "alpha.png"), rng.integers(0, 256, (12, 12, 4), np.uint8))  # RGBA
    save(str(root / "pal.gif"), rng.integers(0, 256, (10, 14, 3), np.uint8))
    save(str(root / "a.bmp"), rng.integers(0, 256, (8, 8, 3), np.uint8))
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = (root / "a.bmp").read_bytes()
    (root / "truncated.bmp").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("not an image")
    return root


def test_folder_dataset(image_folder, caplog):
    config = make_config("folder", folder=str(image_folder), image_size=16, test_fraction=0.25)
    with caplog.at_level(logging.WARNING):
        info = data.get_info(config)
    assert "Skipped 2 of 19" in caplog.text  # corrupt.png and truncated.bmp
    assert info.num_train + info.num_test == 17
    assert info.num_test > 0 and info.num_train > 0
    assert (info.num_classes, info.channels) == (None, 3)
    files = folder_lib.scan(str(image_folder), test_fraction=0.25)
    assert not set(files.train) & set(files.test)
    for channels in (1, 3):
        config.channels = channels
        batches, images, labels = eval_images(config, "train", 4)
        assert len(images) == info.num_train
        chex.assert_shape(images, (None, 16, 16, channels))
        chex.assert_type(images, np.uint8)
        np.testing.assert_array_equal(labels, 0)
        chex.assert_shape(next(iterator(config, "test", batch_size=5, seed=0))["image"],
                          (5, 16, 16, channels))  # fmt: skip


def test_folder_grayscale_only_has_one_channel(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(4):
        save(str(tmp_path / f"g{i}.png"), rng.integers(0, 256, (10, 30), np.uint8))
    info = data.get_info(make_config("folder", folder=str(tmp_path), test_fraction=0.0))
    assert (info.channels, info.num_train, info.num_test) == (1, 4, 0)
    batch = next(iterator(make_config("folder", folder=str(tmp_path), test_fraction=0.0),
                          batch_size=3, seed=0))  # fmt: skip
    chex.assert_shape(batch["image"], (3, 16, 16, 1))


def test_folder_train_test_subfolders_and_sharding(tmp_path):
    rng = np.random.default_rng(2)
    for split, n in (("train", 9), ("test", 3)):
        for i in range(n):
            save(str(tmp_path / split / f"{i}.png"), rng.integers(0, 256, (8, 8, 3), np.uint8))
    config = make_config("folder", folder=str(tmp_path), image_size=8)
    info = data.get_info(config)
    assert (info.num_train, info.num_test) == (9, 3)
    _, full, _ = eval_images(config, "train", 4)
    halves = [eval_images(config, "train", 4, process_index=i, process_count=2) for i in range(2)]
    assert [len(h[1]) for h in halves] == [5, 4]
    assert len(halves[0][0]) == len(halves[1][0]) == 2
    assert rows(np.concatenate([halves[0][1], halves[1][1]])) == rows(full)


def test_folder_decodes_each_file_once(tmp_path, monkeypatch):
    """The decoded, resized shard is cached in memory: later epochs do not decode."""
    rng = np.random.default_rng(3)
    for i in range(10):
        save(str(tmp_path / f"{i}.png"), rng.integers(0, 256, (8, 8, 3), np.uint8))
    calls = []
    original = folder_lib.read_image
    monkeypatch.setattr(folder_lib, "read_image", lambda p, c: calls.append(p) or original(p, c))
    it = iterator(make_config("folder", folder=str(tmp_path), test_fraction=0.0), batch_size=4,
                  seed=0)  # fmt: skip
    take(it, 10)  # 40 examples: 4 epochs
    assert len(calls) == 10


def test_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"No image files found.*empty.*expected"):
        data.get_info(make_config("folder", folder=str(empty)))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"None of the 1 image files.*bad"):
        data.get_info(make_config("folder", folder=str(bad)))
    with pytest.raises(ValueError, match="not a directory"):
        data.get_info(make_config("folder", folder=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="dataset.folder"):
        data.get_info(make_config("folder"))
