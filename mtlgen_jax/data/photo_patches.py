"""`photo_patches`: RGB crops of the colour photographs scikit-image and scikit-learn ship.

A small natural-image dataset that needs no network: deterministic 32x32 RGB
crops of the photographs that scikit-image and scikit-learn ship in their wheels. Each
photograph is first downsampled (PIL Lanczos) so that its short side is 80,
144 or 256 pixels, so a crop holds a part of the scene (an eye, a window, a
galaxy) rather than flat texture; crops whose pixel standard deviation is
below 3 (flat background) are redrawn.

**Split by photograph**: `test` crops come only from `chelsea` (the cat) and
`coffee` (the cup); `train` crops come from the nine other photographs
(`astronaut`, `rocket`, `hubble_deep_field`, `immunohistochemistry`,
`retina`, `colorwheel`; since 1.1.0 also scikit-image's `motorcycle` (the left
view of its stereo pair) and scikit-learn's `china` and `flower`, natural scenes
like the test photographs, where four of the first six are not). No test
photograph is ever seen in training, and the test crops are those of 1.0.0.
Sizes: 9 photos x 3 scales x 448 = 12,096 train crops; 2 x 3 x 176 = 1,056
test crops.

Features: `image` uint8 [32, 32, 3]; `photo` (ClassLabel over the eight
names, so the split can be checked); `scale` (int32, the short side the photo
was resized to). There is **no `label`**: the dataset is unlabelled (the
pipeline yields zeros and reports `num_classes=None`).

Registered with TFDS as `mtlgen_photo_patches`; the project refers to it as
`dataset.name = 'photo_patches'`.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

CROP = 32
SCALES = (80, 144, 256)  # short side of the downsampled photograph
TRAIN_PHOTOS = (
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "motorcycle",  # added in 1.1.0, as the two below
    "china",
    "flower",
)
TEST_PHOTOS = ("chelsea", "coffee")
# The order fixes each photo's label and random stream: new photos go at the end.
PHOTOS = TRAIN_PHOTOS[:6] + TEST_PHOTOS + TRAIN_PHOTOS[6:]
CROPS_PER_SCALE = {"train": 448, "test": 176}
MIN_STD = 3.0  # crops flatter than this (uint8 units) are redrawn
SEED = 0


def load_photo(name: str) -> np.ndarray:
    """One of the bundled RGB photographs, uint8 [H, W, 3]: ``skimage.data.<name>()``,
    the left view of ``skimage.data.stereo_motorcycle()``, or scikit-learn's
    ``load_sample_image('<name>.jpg')`` (china, flower)."""
    import skimage.data  # Lazy: only needed while preparing.

    if name == "motorcycle":
        image = np.asarray(skimage.data.stereo_motorcycle()[0])
    elif name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        image = np.asarray(load_sample_image(f"{name}.jpg"))
    else:
        image = np.asarray(getattr(skimage.data, name)())
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"photo {name!r} is not uint8 RGB: {image.shape} {image.dtype}")
    return image


def downsample(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resizes (Lanczos, antialiased) so the short side is `short_side` pixels."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = short_side / min(h, w)
    size = (max(CROP, round(w * scale)), max(CROP, round(h * scale)))  # PIL wants (W, H)
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def crops(image: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` random CROPxCROP crops with structure, uint8 [count, CROP, CROP, 3]."""
    h, w = image.shape[:2]
    out = []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 50 * count:
            raise RuntimeError("could not find enough non-flat crops")
        y = int(rng.integers(0, h - CROP + 1))
        x = int(rng.integers(0, w - CROP + 1))
        patch = image[y : y + CROP, x : x + CROP]
        if patch.std() >= MIN_STD:
            out.append(patch)
    return np.stack(out)


def split_crops(split: str):
    """Yields (key, photo, scale, crop) for every crop of a split, deterministically."""
    photos = TRAIN_PHOTOS if split == "train" else TEST_PHOTOS
    for name in photos:
        photo = load_photo(name)
        for scale_index, short_side in enumerate(SCALES):
            # One independent stream per (photo, scale): adding a photo or a
            # scale leaves every other crop unchanged.
            rng = np.random.default_rng([SEED, PHOTOS.index(name), scale_index])
            small = downsample(photo, short_side)
            for i, patch in enumerate(crops(small, CROPS_PER_SCALE[split], rng)):
                yield f"{name}/{short_side}/{i}", name, short_side, patch


class MtlgenPhotoPatches(tfds.core.GeneratorBasedBuilder):
    """32x32 RGB crops of scikit-image's photos, split by photograph (unlabelled)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Three more natural train photographs (motorcycle, china, "
                              "flower); test crops unchanged."}
    # TFDS 4.9.10 finds code_path via `importlib_resources`, which it does not install
    # on Python >= 3.9 (tensorflow/datasets#11212); this file is the answer anyway.
    code_path = epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(CROP, CROP, 3), encoding_format="png"),
                    "photo": tfds.features.ClassLabel(names=list(PHOTOS)),
                    "scale": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            homepage="https://scikit-image.org/docs/stable/api/skimage.data.html",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # The photographs are bundled with scikit-image.
        return {split: self._generate_examples(split=split) for split in ("train", "test")}

    def _generate_examples(self, *, split):
        for key, name, short_side, patch in split_crops(split):
            yield key, {"image": _png(patch), "photo": name, "scale": short_side}


def _png(image: np.ndarray) -> bytes:
    """PNG bytes via PIL: 3x faster to prepare than TFDS's one eager TF op per image."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
