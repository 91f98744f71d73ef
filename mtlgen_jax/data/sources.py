"""From a `dataset` config to this process's shard of decoded examples.

A source is one of: an embedded builder (prepared into `data_dir` on first
use), any TFDS catalog builder, or a folder of images. Every source hands the
pipeline the same thing: a tf.data.Dataset of
`{'image': uint8 [h, w, c], 'label': int32 []}` in a fixed order, plus sizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from mtlgen_jax.data import digits, folder, photo_patches
from mtlgen_jax.data.info import DatasetInfo

EMBEDDED = ("digits", "photo_patches")
_EMBEDDED_BUILDERS = {
    "digits": digits.MtlgenDigits,
    "photo_patches": photo_patches.MtlgenPhotoPatches,
}
_OFFLINE_HINT = (
    "On a host without internet, prepare it elsewhere (`tfds build NAME --data_dir=DIR`), "
    "copy DIR over and set dataset.data_dir=DIR."
)


@dataclasses.dataclass(frozen=True)
class Spec:
    """A validated `dataset` config."""

    name: str
    data_dir: str | None
    image_size: int
    folder: str | None
    channels: int | None
    train_split: str
    test_split: str
    shuffle_buffer: int
    test_fraction: float
    cache: bool | None  # optional `dataset.cache`: None = cache when it fits in 4 GiB


def _field(config: Any, key: str, default: Any) -> Any:
    if isinstance(config, Mapping) or hasattr(config, "get"):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None else value


def parse_config(config: Any) -> Spec:
    """Validates a `dataset` ConfigDict (or mapping); raises ValueError naming the field."""
    name = _field(config, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset.name must be a non-empty string, got {name!r}.")
    image_size = _field(config, "image_size", None)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"dataset.image_size must be a positive int, got {image_size!r}.")
    channels = _field(config, "channels", None)
    if channels not in (None, 1, 3):
        raise ValueError(f"dataset.channels must be None, 1 or 3, got {channels!r}.")
    data_dir = _field(config, "data_dir", None)
    if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
        raise ValueError(f"dataset.data_dir must be a path or None, got {data_dir!r}.")
    splits = {
        k: _field(config, k, d) for k, d in (("train_split", "train"), ("test_split", "test"))
    }
    for key, value in splits.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"dataset.{key} must be a non-empty split string, got {value!r}.")
    buffer = _field(config, "shuffle_buffer", 10_000)
    if isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1:
        raise ValueError(f"dataset.shuffle_buffer must be a positive int, got {buffer!r}.")
    fraction = _field(config, "test_fraction", 0.1)
    if not isinstance(fraction, int | float) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"dataset.test_fraction must be a float in [0, 1), got {fraction!r}.")
    folder_path = _field(config, "folder", None) or None
    if name == "folder" and not folder_path:
        raise ValueError("dataset.name='folder' needs dataset.folder=PATH (a folder of images).")
    cache = _field(config, "cache", None)
    if cache not in (None, True, False):
        raise ValueError(f"dataset.cache must be None (auto), True or False, got {cache!r}.")
    return Spec(
        name=name,
        data_dir=os.fspath(data_dir) if data_dir is not None else None,
        image_size=image_size,
        folder=os.fspath(folder_path) if folder_path else None,
        channels=channels,
        train_split=splits["train_split"],
        test_split=splits["test_split"],
        shuffle_buffer=buffer,
        test_fraction=float(fraction),
        cache=cache,
    )


@dataclasses.dataclass(frozen=True)
class Shard:
    """One process's part of a split, before resizing."""

    examples: tf.data.Dataset  # {'image': uint8 [h, w, c], 'label': int32 []}, fixed order
    size: int  # examples on this process
    max_size: int  # most examples any process gets (eval iterators pad to it)


@contextlib.contextmanager
def _prepare_lock(root: str, name: str):
    """An exclusive file lock, so processes sharing a host prepare a dataset once."""
    if "://" in root:  # Remote storage: no local lock to take.
        yield
        return
    import fcntl

    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{name}.prepare.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _prepared(make_builder, spec: Spec, *, catalog: bool) -> tfds.core.DatasetBuilder:
    builder = make_builder()
    if builder.is_prepared():
        return builder
    root = os.path.expanduser(spec.data_dir or tfds.core.constants.DATA_DIR)
    with _prepare_lock(root, builder.name):
        builder = make_builder()  # Another process may have prepared it meanwhile.
        if not builder.is_prepared():
            logging.info("Preparing TFDS dataset %s in %s.", builder.name, root)
            try:
                builder.download_and_prepare()
            except Exception as e:
                if not catalog:
                    raise
                raise RuntimeError(
                    f"Could not download/prepare TFDS dataset {spec.name!r} in {root}: {e}. "
                    + _OFFLINE_HINT.replace("NAME", spec.name)
                ) from e
    return builder


class TfdsSource:
    """An embedded or catalog TFDS builder."""

    def __init__(self, spec: Spec, builder: tfds.core.DatasetBuilder):
        self.spec, self.builder = spec, builder
        features = builder.info.features
        if "image" not in features:
            raise ValueError(
                f"TFDS dataset {spec.name!r} has no 'image' feature (it has {list(features)}); "
                "only image datasets can be used."
            )
        own = features["image"].shape[-1]
        self.source_channels = 3 if own in (None, 4) else own  # alpha is dropped
        label = features["label"] if "label" in features else None
        self.has_label = isinstance(label, tfds.features.ClassLabel)
        self.num_classes = label.num_classes if self.has_label else None

    def split_size(self, split: str) -> int:
        splits = self.builder.info.splits
        if not splits:  # Only mocked builders (tfds.testing.mock_data) lack split metadata.
            return int(self._read(split).cardinality())
        try:
            return int(splits[split].num_examples)
        except (KeyError, ValueError) as e:
            raise ValueError(
                f"Split {split!r} is not valid for dataset {self.spec.name!r} (splits: "
                f"{sorted(splits)}); set dataset.train_split / dataset.test_split."
            ) from e

    def _read(self, split: str) -> tf.data.Dataset:
        return self.builder.as_dataset(
            split=split, shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False)
        )

    def shard(self, split: str, *, process_index: int, process_count: int, channels: int) -> Shard:
        del channels  # Converted by the pipeline.
        sub = [
            tfds.split_for_jax_process(split, process_index=p, process_count=process_count)
            for p in range(process_count)
        ]
        self.split_size(split)  # Validates the split name with a clear error.
        ds = self._read(sub[process_index])
        size = int(ds.cardinality())
        if size < 0:  # Unknown cardinality: count once.
            size = int(ds.reduce(0, lambda n, _: n + 1))
        if self.builder.info.splits and size == self.split_size(sub[process_index]):
            max_size = max(self.split_size(s) for s in sub)
        else:  # Mocked data: the metadata does not describe what is read.
            max_size = size
        has_label = self.has_label

        def select(ex):
            label = tf.cast(ex["label"], tf.int32) if has_label else tf.zeros([], tf.int32)
            image = ex["image"]
            return {"image": image[..., :3] if image.shape[-1] == 4 else image, "label": label}

        ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
        return Shard(ds, size, max_size)


class FolderSource:
    """A folder of image files (see `folder.py`)."""

    has_label = False
    num_classes = None

    def __init__(self, spec: Spec):
        self.spec = spec
        self.files = folder.scan(spec.folder, test_fraction=spec.test_fraction)
        self.source_channels = self.files.channels

    def _paths(self, split: str) -> tuple[str, ...]:
        if split not in ("train", "test"):
            raise ValueError(f"A folder dataset has splits 'train' and 'test', not {split!r}.")
        return getattr(self.files, split)

    def split_size(self, split: str) -> int:
        return len(self._paths(split))

    def shard(self, split: str, *, process_index: int, process_count: int, channels: int) -> Shard:
        paths = self._paths(split)
        mine = folder.shard(paths, process_index=process_index, process_count=process_count)
        ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(mine) or [""], tf.string))
        ds = ds.take(len(mine))

        def decode(path):
            image = tf.numpy_function(
                lambda p: folder.read_image(p.decode(), channels), [path], tf.uint8, stateful=False
            )
            image.set_shape([None, None, channels])
            return {"image": image, "label": tf.zeros([], tf.int32)}

        ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        return Shard(ds, len(mine), math.ceil(len(paths) / process_count))


def resolve(spec: Spec) -> TfdsSource | FolderSource:
    """The source for a validated spec; prepares embedded datasets on first use."""
    if spec.name == "folder":
        return FolderSource(spec)
    if spec.name in _EMBEDDED_BUILDERS:
        cls = _EMBEDDED_BUILDERS[spec.name]
        builder = _prepared(lambda: cls(data_dir=spec.data_dir), spec, catalog=False)
        return TfdsSource(spec, builder)
    try:
        make = lambda: tfds.builder(spec.name, data_dir=spec.data_dir)  # noqa: E731
        make()
    except ValueError as e:  # DatasetNotFoundError is a ValueError.
        reason = str(e).splitlines()[0]
        raise ValueError(
            f"Unknown dataset.name={spec.name!r} ({reason}). Use one of the embedded datasets "
            f"{EMBEDDED}, 'folder' (with dataset.folder=PATH), or a valid TFDS catalog name "
            "such as 'mnist', 'fashion_mnist', 'cifar10' or 'celeb_a'. "
            + _OFFLINE_HINT.replace("NAME", spec.name)
        ) from None
    return TfdsSource(spec, _prepared(make, spec, catalog=True))


def split_name(spec: Spec, split: str) -> str:
    """The split to read for `split`.

    The configured split strings (dataset.train_split / dataset.test_split)
    are used as given; otherwise 'train' and 'test' name those roles, and any
    other string is a split of the dataset (e.g. 'validation', 'train[:10%]').
    """
    if split in (spec.train_split, spec.test_split):
        return split
    return {"train": spec.train_split, "test": spec.test_split}.get(split, split)


def get_info(config: Any) -> DatasetInfo:
    """Validates `config`, prepares the dataset if needed and describes it.

    Raises:
      ValueError: for an invalid config field or an unknown dataset name (the
        message lists the embedded names and how to use a TFDS catalog name).
    """
    spec = parse_config(config)
    source = resolve(spec)
    return DatasetInfo(
        name=spec.name,
        num_classes=source.num_classes,
        channels=spec.channels or source.source_channels,
        image_size=spec.image_size,
        num_train=source.split_size(spec.train_split),
        num_test=source.split_size(spec.test_split),
        train_split=spec.train_split,
        test_split=spec.test_split,
    )
