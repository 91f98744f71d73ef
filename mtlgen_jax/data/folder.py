"""A user's own folder of images (`dataset.name = 'folder'`).

Files ending in .png/.jpg/.jpeg/.bmp/.gif (any case) are collected recursively
and sorted. Every file is decoded once with PIL while the list is built, so
an unreadable or corrupt file is skipped (and counted in an absl warning)
here and can never crash tf.data later.

Splits:
* If the folder has both a `train/` and a `test/` subfolder, they are the
  splits (other files are ignored, with a log line).
* Otherwise a file is in `test` when a hash of its path relative to the
  folder falls below `dataset.test_fraction`: deterministic, the same on every
  host, and stable when files are added (no file changes split).

Images are unlabelled (the pipeline yields label 0, `num_classes=None`).
Grayscale and colour files may be mixed: the dataset's own channel count is 1
if every file is grayscale and 3 otherwise, and every image is converted to
the configured count. Transparent images are composited over white; GIFs give
their first frame; 16-bit grayscale is scaled to 8 bits.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
from absl import logging

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N"})


@dataclasses.dataclass(frozen=True)
class FolderSplits:
    """The validated files of a folder, by split."""

    root: str
    train: tuple[str, ...]  # absolute paths, sorted
    test: tuple[str, ...]
    channels: int  # 1 if every readable file is grayscale, else 3
    num_skipped: int  # unreadable files
    layout: str  # 'subfolders' (train/ and test/) or 'holdout' (hash-based)


def _to_mode(image, channels: int):
    """Converts an opened PIL image to 'L' (channels=1) or 'RGB' (channels=3)."""
    from PIL import Image

    if image.mode.startswith("I;16"):
        # Pillow clips 16-bit values when converting to 'L'; scale instead.
        image = Image.fromarray((np.asarray(image, np.uint16) >> 8).astype(np.uint8), "L")
    elif image.mode in ("I", "F"):
        image = Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("L" if channels == 1 else "RGB")


def read_image(path: str, channels: int) -> np.ndarray:
    """Decodes one file to uint8 [H, W, channels] (channels 1 or 3)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()  # Decodes fully: truncated files fail here, not later.
        array = np.asarray(_to_mode(image, channels), dtype=np.uint8)
    return array[..., None] if array.ndim == 2 else array


def _probe(path: str) -> bool | None:
    """Fully decodes a file. Returns whether it is grayscale, or None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            gray = image.mode in _GRAY_MODES
            _to_mode(image, 1 if gray else 3)
        return gray
    except Exception as e:  # Any decoder error means: skip this file.
        logging.log_first_n(logging.WARNING, "Skipping unreadable image %s: %s", 5, path, e)
        return None


def _list_images(root: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if name.lower().endswith(EXTENSIONS):
                found.append(os.path.join(dirpath, name))
    return sorted(found)


def _in_holdout(relpath: str, fraction: float) -> bool:
    digest = hashlib.sha256(relpath.replace(os.sep, "/").encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


_CACHE: dict[tuple, FolderSplits] = {}


def scan(folder: str, *, test_fraction: float) -> FolderSplits:
    """Lists, validates and splits the images under `folder`.

    Results are memoised on the folder's listing (paths, sizes, mtimes), so
    calling this for `get_info` and then for each iterator decodes once.

    Raises:
      ValueError: if `folder` is not a directory, holds no image files, or
        none of them can be decoded.
    """
    root = os.path.abspath(os.path.expanduser(folder))
    if not os.path.isdir(root):
        raise ValueError(f"dataset.folder={folder!r} is not a directory (resolved to {root}).")
    paths = _list_images(root)
    if not paths:
        raise ValueError(
            f"No image files found under dataset.folder={root!r}: expected files ending in "
            f"{', '.join(EXTENSIONS)} (searched recursively, case-insensitive)."
        )
    stats = tuple((p, os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in paths)
    key = (root, float(test_fraction), stats)
    if key not in _CACHE:
        _CACHE[key] = _scan(root, paths, test_fraction)
    return _CACHE[key]


def _scan(root: str, paths: list[str], test_fraction: float) -> FolderSplits:
    gray = {p: _probe(p) for p in paths}
    valid = [p for p in paths if gray[p] is not None]
    skipped = len(paths) - len(valid)
    if skipped:
        logging.warning(
            "Skipped %d of %d unreadable image files under %s.", skipped, len(paths), root
        )
    if not valid:
        raise ValueError(
            f"None of the {len(paths)} image files under dataset.folder={root!r} could be "
            "decoded by PIL; expected readable PNG/JPEG/BMP/GIF images."
        )
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    if os.path.isdir(train_dir) and os.path.isdir(test_dir):
        layout = "subfolders"
        train = [p for p in valid if p.startswith(train_dir + os.sep)]
        test = [p for p in valid if p.startswith(test_dir + os.sep)]
        ignored = len(valid) - len(train) - len(test)
        if ignored:
            logging.info("Ignoring %d images outside train/ and test/ in %s.", ignored, root)
    else:
        layout = "holdout"
        held = {p: _in_holdout(os.path.relpath(p, root), test_fraction) for p in valid}
        train = [p for p in valid if not held[p]]
        test = [p for p in valid if held[p]]
    used = (train + test) or valid
    channels = 1 if all(gray[p] for p in used) else 3
    logging.info(
        "Folder %s (%s): %d train, %d test images, %d channel(s), %d skipped.",
        root, layout, len(train), len(test), channels, skipped,
    )  # fmt: skip
    return FolderSplits(root, tuple(train), tuple(test), channels, skipped, layout)


def shard(paths: tuple[str, ...], *, process_index: int, process_count: int) -> tuple[str, ...]:
    """This process's contiguous slice, sized like `tfds.even_splits` ([4, 4, 3] for 11/3)."""
    return paths[slice(*shard_bounds(len(paths), process_index, process_count))]


def shard_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    base, extra = divmod(n, process_count)
    start = process_index * base + min(process_index, extra)
    return start, start + base + (process_index < extra)
