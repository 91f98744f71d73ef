"""Restoring a user's photograph of any size with a trained run: tiles blended per step.

The model is trained on small crops (``dataset.image_size``). A larger photo is
processed as overlapping tiles of that size, and the tiles are blended at EVERY
sampler step, not once at the end: the task's condition and the sampler's state
``x_t`` are full-size images, each model call evaluates the tiles of ``x_t`` (a
batch, sharded over the devices) and blends their outputs with a smooth window
into one full-size prediction, and the sampler then steps the whole image. So the
noise is a function of the pixel (drawn once for the whole image), every tile of
the next step sees the blended image, and no tile drifts in colour from its
neighbours -- no seams, whichever objective or sampler. A hole larger than a tile
is filled coarse to fine: the task's ``start`` is computed once on the whole image
(inpainting: the multigrid smooth fill, which carries the colours around the hole
into its middle from the coarsest level down), and each tile's network corrects
that fill; with a multi-step sampler the tiles also see their neighbours' progress
through the shared ``x_t``.

An image smaller than a tile is reflect-padded to the tile size and cropped back.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from mtlgen_jax import objectives
from mtlgen_jax.tasks import Condition

TILE_BATCH = 64  # tiles per model call (then lax.map over chunks): bounds the memory


def tile_starts(length: int, tile: int, stride: int) -> np.ndarray:
    """Start offsets of tiles of size ``tile`` covering [0, length), the last flush with
    the end (``length >= tile``)."""
    if length <= tile:
        return np.zeros((1,), np.int32)
    n = math.ceil((length - tile) / stride) + 1
    return np.round(np.linspace(0, length - tile, n)).astype(np.int32)


def window(tile: int, overlap: int) -> np.ndarray:
    """[tile] blending weights: a raised-cosine ramp over ``overlap`` pixels at each end,
    1 in the middle; never 0, so every pixel of the image has weight."""
    w = np.ones(tile, np.float32)
    if overlap > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)
        w[:overlap] = np.maximum(ramp, 1e-3)
        w[tile - overlap:] = np.maximum(ramp[::-1], 1e-3)
    return w


class Tiler:
    """Splits a [H, W, C] image into overlapping tiles and blends tiles back.

    Args:
      height, width: the image size (each >= tile).
      tile: the tile side (the model's crop size).
      overlap: pixels shared by neighbouring tiles.
    """

    def __init__(self, height: int, width: int, tile: int, overlap: int):
        stride = max(tile - overlap, 1)
        ys, xs = tile_starts(height, tile, stride), tile_starts(width, tile, stride)
        starts = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
        self.num = len(starts)
        self.rows = starts[:, :1] + np.arange(tile)[None]  # [N, tile]
        self.cols = starts[:, 1:] + np.arange(tile)[None]
        w = window(tile, overlap)
        self.weight = np.outer(w, w)[None, :, :, None]  # [1, tile, tile, 1]
        total = np.zeros((height, width, 1), np.float32)
        np.add.at(total, (self.rows[:, :, None], self.cols[:, None, :]),
                  np.broadcast_to(self.weight, (self.num, tile, tile, 1)))
        self.total = total

    def split(self, image: jax.Array) -> jax.Array:
        """[H, W, C] -> [N, tile, tile, C]."""
        return image[self.rows[:, :, None], self.cols[:, None, :]]

    def merge(self, tiles: jax.Array) -> jax.Array:
        """[N, tile, tile, C] -> [H, W, C]: the window-weighted average of the tiles."""
        h, w, _ = self.total.shape
        out = jnp.zeros((h, w, tiles.shape[-1]), jnp.float32)
        out = out.at[self.rows[:, :, None], self.cols[:, None, :]].add(tiles * self.weight)
        return out / self.total


def _pad_to(x: jax.Array, size: int) -> jax.Array:
    """[1, H, W, C] reflect-padded (bottom/right) to at least size x size."""
    ph, pw = max(size - x.shape[1], 0), max(size - x.shape[2], 0)
    if not ph and not pw:
        return x
    mode = "reflect" if x.shape[1] > ph and x.shape[2] > pw else "edge"
    return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)


def restore(comp, params, task_index: int, cond: Condition, rng: jax.Array, *, steps: int,
            sampler: str, eta: float, overlap: int, sharding=None, progress=None) -> jax.Array:
    """``task``'s output for one full-size condition [1, H, W, C], tile by tile.

    Args:
      comp: the run's Components.
      params: the model parameters.
      task_index: the task's id.
      cond: the full-size condition (``Task.condition`` of the user's input).
      rng: sampling key.
      steps, sampler, eta: the sampler settings (``objectives.sample``).
      overlap: pixels shared by neighbouring tiles.
      sharding: optional NamedSharding of a batch axis: each chunk of tiles is spread
        over its devices.
      progress: optional ``() -> None`` called on the host after each model call.

    Returns:
      float32 [1, H, W, C] in [-1, 1] (the task's ``postprocess`` applied).
    """
    task = comp.tasks[task_index]
    size = comp.info.image_size
    h, w = cond.image.shape[1:3]
    cond_p = jax.tree.map(lambda x: _pad_to(x, size), cond)
    tiler = Tiler(cond_p.image.shape[1], cond_p.image.shape[2], size, min(overlap, size // 2))
    devices = sharding.mesh.size if sharding is not None else 1
    chunk = min(TILE_BATCH, tiler.num)
    chunk = -(-chunk // devices) * devices
    n_pad = -(-tiler.num // chunk) * chunk

    def chunks(x):  # [N, ...] -> [n_pad / chunk, chunk, ...], padding repeats the last tile
        x = jnp.concatenate([x, jnp.repeat(x[-1:], n_pad - tiler.num, 0)]) if n_pad > tiler.num \
            else x
        return x.reshape((n_pad // chunk, chunk) + x.shape[1:])

    cond_tiles = jax.tree.map(lambda x: chunks(tiler.split(x[0])), cond_p)
    task_id = jnp.full((chunk,), task_index, jnp.int32)
    labels = task.model_labels(jnp.zeros((chunk,), jnp.int32), rng, train=False)

    def head_fn(x_t, t):  # x_t [1, H, W, C] full size -> the blended head output
        def one(args):
            x, c = args
            if sharding is not None:
                x, c = jax.lax.with_sharding_constraint((x, c), sharding)
            return comp.model.apply({"params": params}, x, c, jnp.full((chunk,), t[0]),
                                    task_id, labels)

        out = jax.lax.map(one, (chunks(tiler.split(x_t[0])), cond_tiles))
        out = out.reshape((n_pad,) + out.shape[2:])[: tiler.num]
        if progress is not None:
            jax.debug.callback(lambda _: progress(), t)
        return tiler.merge(out)[None]

    out = objectives.sample(task, head_fn, cond_p, rng, schedule=comp.schedule,
                            prediction=comp.prediction, steps=steps, sampler=sampler, eta=eta)
    return out[:, :h, :w]
