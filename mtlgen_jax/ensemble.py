"""Geometric self-ensemble: a restoration averaged over the eight flips and rotations.

The test-time ensemble of EDSR+ (Lim et al. 2017) and of "Seven ways to improve
example-based single image super resolution" (Timofte et al. 2016): the condition is
transformed by each element g of the dihedral group of the square (4 rotations x
optional mirror), restored, transformed back by g^-1, and the 8 results averaged.
A network is not exactly equivariant to these transforms, so its 8 estimates of the
same image differ; their mean is a better estimate of the posterior mean (the fidelity
operating point) at 8x the compute, with no training change.

Every task's degradation commutes with these transforms (pixel masks, per-pixel noise
and luminance, and 2x2-block means of an image whose size the factor divides), so each
transformed condition is a valid condition and each result is consistent with the
original one; so is their mean, since each task's consistency set is convex. Averaging
independent *samples* (a stochastic sampler at the detailed operating point) trades their
detail for PSNR: the option is meant for the fidelity point.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SIZE = 8  # the dihedral group of the square


def transform(x: jax.Array, g: int) -> jax.Array:
    """Element ``g`` (0..7) of the dihedral group on the H, W axes of [..., H, W, C]:
    ``g % 4`` quarter turns, then a left-right mirror when ``g >= 4``."""
    x = jnp.rot90(x, g % 4, axes=(-3, -2))
    return jnp.flip(x, axis=-2) if g >= 4 else x


def invert(x: jax.Array, g: int) -> jax.Array:
    """The inverse of :func:`transform` ``g``: ``invert(transform(x, g), g) == x``."""
    x = jnp.flip(x, axis=-2) if g >= 4 else x
    return jnp.rot90(x, -(g % 4), axes=(-3, -2))


def batched(fn, tree):
    """``mean_g invert(fn(transform(tree, g)), g)`` with one call of ``fn`` on a batch 8x as
    large (square images: every transform keeps the shape).

    Args:
      fn: ``tree -> [B, H, W, C]``, batch-wise (row i of its output depends on row i
        of every [B, H, W, *] leaf of ``tree`` only).
      tree: a pytree (e.g. a ``Condition``) of [B, H, W, *] arrays with H == W.
    """
    leaves = jax.tree.leaves(tree)
    b = leaves[0].shape[0]
    if any(leaf.shape[-3] != leaf.shape[-2] for leaf in leaves):
        raise ValueError("batched self-ensemble needs square images; use `looped`.")
    stacked = jax.tree.map(
        lambda x: jnp.concatenate([transform(x, g) for g in range(SIZE)], axis=0), tree)
    out = fn(stacked)
    return sum(invert(out[g * b:(g + 1) * b], g) for g in range(SIZE)) / SIZE


def looped(fn, tree):
    """``mean_g invert(fn(transform(tree, g)), g)`` with 8 calls of ``fn`` (any image shape:
    a quarter turn swaps H and W)."""
    total = None
    for g in range(SIZE):
        out = invert(fn(jax.tree.map(lambda x, g=g: transform(x, g), tree)), g)
        total = out if total is None else total + out
    return total / SIZE
