"""Per-task gradient pytrees: their Gram matrix and weighted combination.

`task_grads` is any pytree whose leaves carry a leading task axis K (a flat [K, P]
array is the one-leaf case). Nothing here concatenates leaves into a [K, P] matrix:
the Gram matrix is a sum of per-leaf products and the combination is per leaf.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 / bf16 passes: solvers need accurate Grams


def check_task_axis(task_grads: Any, num_tasks: int) -> None:
    """Raises ValueError unless every leaf has leading axis `num_tasks`."""
    leaves = jax.tree.leaves(task_grads)
    if not leaves:
        raise ValueError("task_grads has no leaves")
    for leaf in leaves:
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != num_tasks:
            raise ValueError(
                f"every task_grads leaf needs leading axis {num_tasks} (tasks); "
                f"got a leaf of shape {jnp.shape(leaf)}"
            )


def gram(task_grads: Any) -> jax.Array:
    """Returns G [K, K] float32 with G[i, j] = <g_i, g_j> over all leaves."""
    leaves = jax.tree.leaves(task_grads)
    k = leaves[0].shape[0]
    g = jnp.zeros((k, k), jnp.float32)
    for leaf in leaves:
        x = jnp.reshape(leaf, (k, -1)).astype(jnp.float32)  # [K, P_leaf]
        g = g + jnp.matmul(x, x.T, precision=_HIGHEST)
    return g


def combine(weights: jax.Array, task_grads: Any) -> Any:
    """Returns sum_k weights[k] * g_k: one task's pytree, each leaf in its own dtype."""

    def leaf_sum(leaf):  # leaf [K, ...] -> [...]
        out = jnp.tensordot(weights, leaf.astype(jnp.float32), axes=1, precision=_HIGHEST)
        return out.astype(leaf.dtype)

    return jax.tree.map(leaf_sum, task_grads)


def normalize_gram(gram_matrix: jax.Array) -> jax.Array:
    """Returns G / (trace(G) / K), symmetrised; all zeros for a zero G.

    The weights of every method here are invariant to a positive rescaling of G, so
    solving on the normalised matrix (mean squared gradient norm 1) only improves
    float32 conditioning and makes tolerances scale-free.
    """
    k = gram_matrix.shape[0]
    g = 0.5 * (gram_matrix + gram_matrix.T)
    scale = jnp.trace(g) / k
    return jnp.where(scale > 0, g / jnp.where(scale > 0, scale, 1.0), 0.0)


def safe_divide(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den != 0, else 0 (no NaN, no inf, safe under jit)."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)
