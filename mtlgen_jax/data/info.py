"""``DatasetInfo``: what the model, tasks and step need to know about a dataset.

Its own module, without TensorFlow, so that code that never reads data (the
benchmarks on a GPU image, the tests on synthetic batches) can build a run.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the rest of the project needs to know about a configured dataset.

    `num_train`/`num_test` count the whole splits (all processes together).
    `num_classes` is None for unlabelled datasets, whose batches carry label 0.
    `channels` and `image_size` are those of the batches the pipeline yields.
    """

    name: str
    num_classes: int | None
    channels: int
    image_size: int
    num_train: int
    num_test: int
    train_split: str
    test_split: str
