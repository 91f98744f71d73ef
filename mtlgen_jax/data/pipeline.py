"""The tf.data input pipeline: deterministic, exactly resumable, per process.

Order of operations, per process:
  shard of the split (fixed order) -> decode -> channels -> center square crop
  -> resize to `image_size` -> cache in memory -> epochs -> batch -> prefetch.
The cache holds the resized uint8 shard (so later epochs decode nothing); it
is skipped for one-pass iterators and, unless `dataset.cache=True`, when the
shard would take more than 4 GiB.

**Determinism and resume.** The example stream is the concatenation of epochs
0, 1, 2, ...; epoch `e` is the cached shard shuffled with a seed derived from
`(seed, e)` (a Philox hash, so independent of how far earlier epochs were
read). Batches are consecutive runs of `batch_size` examples of that stream
and may straddle an epoch boundary, exactly like `repeat().batch()`. So
`start_batch=n` starts at example `n * batch_size` of the stream: it opens the
epoch that holds it directly and skips only the examples before it inside
that epoch. The result equals batches n, n+1, ... of a fresh iterator.
The order does not depend on TensorFlow's global seed (`tf.random.set_seed`).

**Eval iterators** (`repeat=False`) visit every example of the shard once and
add a `mask` key (bool [B]): the last partial batch is padded with zeros
(mask False), and every process yields the same number of batches,
ceil(largest shard / B), padding with fully masked batches where its shard
is smaller, so multi-host eval steps stay in lockstep.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from mtlgen_jax.data import sources

_CACHE_LIMIT_BYTES = 4 << 30  # auto cache (dataset.cache=None) only below this
_NEVER = 2**62  # "forever" in epochs


def _to_uint8(x: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def preprocess(image: tf.Tensor, *, size: int, channels: int) -> tf.Tensor:
    """uint8 [h, w, c] -> uint8 [size, size, channels]: center square crop, resize.

    Downsizing is antialiased (area-weighted triangle filter); upsizing is
    bilinear. RGB -> gray uses ITU-R 601 luma (`tf.image.rgb_to_grayscale`);
    gray -> RGB repeats the channel.
    """
    own = image.shape[-1]
    if channels == 1 and own == 3:  # Before resizing: cheaper on one channel.
        image = _to_uint8(tf.image.rgb_to_grayscale(tf.cast(image, tf.float32)))
    static_hw = image.shape[:2]
    if not (static_hw[0] is not None and static_hw[0] == static_hw[1]):
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        side = tf.minimum(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top : top + side, left : left + side]
    if static_hw[0] != size or static_hw[1] != size:
        resized = tf.image.resize(
            tf.cast(image, tf.float32), [size, size], method="bilinear", antialias=True
        )
        image = _to_uint8(resized)
    if channels == 3 and own == 1:
        image = tf.tile(image, [1, 1, 3])
    return tf.ensure_shape(image, [size, size, channels])


def _epoch_seed(seed: int, epoch: tf.Tensor) -> tf.Tensor:
    """A shuffle seed for one epoch, a pure function of (seed, epoch)."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.stateless_uniform([], seed=key, minval=0, maxval=2**31 - 1, dtype=tf.int64)


def _stream(
    base: tf.data.Dataset, *, size: int, start: int, seed: int, shuffle: bool, buffer: int,
    repeat: bool,
) -> tf.data.Dataset:  # fmt: skip
    """Examples `start`, `start + 1`, ... of the (epoch 0, epoch 1, ...) stream."""
    first_epoch, offset = divmod(start, size)
    last_epoch = _NEVER if repeat else 1
    buffer = min(buffer, size)

    def one_epoch(epoch):
        if not shuffle:
            return base
        # Traced in its own graph: clear that graph's seed, so a global
        # tf.random.set_seed elsewhere cannot change the order (it would be
        # mixed into the shuffle's seeds). Affects only this function's graph.
        tf.compat.v1.set_random_seed(None)
        return base.shuffle(buffer, seed=_epoch_seed(seed, epoch), reshuffle_each_iteration=False)

    epochs = tf.data.Dataset.range(first_epoch, max(first_epoch, last_epoch))
    return epochs.flat_map(one_epoch).skip(offset)


def _pad_batch(batch_size: int):
    def pad(batch):
        n = tf.shape(batch["label"])[0]
        extra = batch_size - n
        image = tf.pad(batch["image"], [[0, extra], [0, 0], [0, 0], [0, 0]])
        label = tf.pad(batch["label"], [[0, extra]])
        mask = tf.range(batch_size) < n
        return {
            "image": tf.ensure_shape(image, [batch_size, *batch["image"].shape[1:]]),
            "label": tf.ensure_shape(label, [batch_size]),
            "mask": mask,
        }

    return pad


def _check_args(batch_size: int, seed: int, start_batch: int, index: int, count: int) -> None:
    for name, value, low in (("batch_size", batch_size, 1), ("start_batch", start_batch, 0)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an int, got {seed!r}.")
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} is not in [0, process_count={count}).")


def create_iterator(
    dataset_config: Any,
    split: str = "train",
    *,
    batch_size: int,
    seed: int,
    start_batch: int = 0,
    shuffle: bool = True,
    repeat: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of one split for this process, as numpy dicts.

    Args:
      dataset_config: the `dataset` ConfigDict (name, data_dir, image_size,
        folder, channels, train_split, test_split, shuffle_buffer, test_fraction).
      split: dataset.train_split or dataset.test_split (or the roles 'train' /
        'test', which map to them), or any other split string of the dataset.
      batch_size: examples per batch on THIS process (global batch / process count).
      seed: shuffle seed; the same seed gives the same batches.
      start_batch: resume point; yields exactly the batches a fresh iterator
        yields from its `start_batch`-th (0-based) on, without replaying epochs.
      shuffle: shuffle each epoch (seeded by (seed, epoch)).
      repeat: True: endless stream, full batches only (batches straddle epochs).
        False: one pass, padded final batch and a 'mask' key (see module doc).
      process_index, process_count: default to jax.process_index()/process_count().

    Returns:
      An iterator of {'image': uint8 [B, S, S, C], 'label': int32 [B]} (+ 'mask'
      bool [B] when repeat=False). Label is 0 for unlabelled datasets.
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    _check_args(batch_size, seed, start_batch, process_index, process_count)
    spec = sources.parse_config(dataset_config)
    source = sources.resolve(spec)
    split_name = sources.split_name(spec, split)
    channels = spec.channels or source.source_channels
    shard = source.shard(
        split_name, process_index=process_index, process_count=process_count, channels=channels
    )
    if shard.size == 0:
        raise ValueError(
            f"Split {split_name!r} of dataset {spec.name!r} has no examples for process "
            f"{process_index} of {process_count}."
        )
    size = spec.image_size
    base = shard.examples.map(
        lambda ex: {
            "image": preprocess(ex["image"], size=size, channels=channels),
            "label": ex["label"],
        },
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    nbytes = shard.size * size * size * channels
    if not repeat:
        pass  # One pass: a cache would never be read.
    elif spec.cache or (spec.cache is None and nbytes <= _CACHE_LIMIT_BYTES):
        base = base.cache()
    else:
        logging.info("Not caching %s/%s (%.1f GiB).", spec.name, split_name, nbytes / 2**30)

    start = int(start_batch) * batch_size
    ds = _stream(
        base, size=shard.size, start=start, seed=int(seed) % 2**63, shuffle=shuffle,
        buffer=spec.shuffle_buffer, repeat=repeat,
    )  # fmt: skip
    if repeat:
        ds = ds.batch(batch_size, drop_remainder=True)
    else:
        own = math.ceil(max(shard.size - start, 0) / batch_size)
        total = max(math.ceil(shard.max_size / batch_size) - int(start_batch), own)
        ds = ds.batch(batch_size).map(_pad_batch(batch_size))
        if total > own:
            empty = {
                "image": tf.zeros([batch_size, size, size, channels], tf.uint8),
                "label": tf.zeros([batch_size], tf.int32),
                "mask": tf.zeros([batch_size], tf.bool),
            }
            ds = ds.concatenate(tf.data.Dataset.from_tensors(empty).repeat(total - own))
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options).prefetch(tf.data.AUTOTUNE)
    return ds.as_numpy_iterator()
