"""`digits`: scikit-learn's 8x8 handwritten digits as a TFDS builder.

The 1,797 images of `sklearn.datasets.load_digits` (bundled with
scikit-learn, so preparing needs no network) with their class 0..9. Pixel
values 0..16 are scaled to uint8 0..255. The train/test split is a fixed
stratified 80/20 split: for every class, a permutation drawn from
`np.random.default_rng(0)` puts the first 20% (rounded) of that class's
examples in `test`. That gives 1,438 train and 359 test examples, the same on
every host and every run.

Registered with TFDS as `mtlgen_digits` (a prefixed name, so that a future
TFDS catalog entry called `digits` can never collide with it); the project
refers to it as `dataset.name = 'digits'`.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Returns all digits as (images uint8 [1797, 8, 8, 1], labels int64 [1797])."""
    from sklearn.datasets import load_digits  # Lazy: sklearn is slow to import.

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    return images, bunch.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The fixed stratified split: {'train': indices, 'test': indices}, sorted."""
    rng = np.random.default_rng(SPLIT_SEED)
    test = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        n_test = int(round(TEST_FRACTION * len(members)))
        test.append(rng.permutation(members)[:n_test])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return {"train": train, "test": test}


class MtlgenDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits (1,438 train / 359 test)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    # TFDS 4.9.10 finds code_path via `importlib_resources`, which it does not install
    # on Python >= 3.9 (tensorflow/datasets#11212); this file is the answer anyway.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1), encoding_format="png"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is bundled with scikit-learn.
        images, labels = load_arrays()
        return {
            name: self._generate_examples(images=images, labels=labels, indices=idx)
            for name, idx in split_indices(labels).items()
        }

    def _generate_examples(self, *, images, labels, indices):
        for i in indices:
            # The key is the index in scikit-learn's array: stable and unique.
            yield int(i), {"image": images[i], "label": int(labels[i])}
