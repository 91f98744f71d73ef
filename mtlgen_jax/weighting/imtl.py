"""Impartial multi-task learning, gradient part (`imtl`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mtlgen_jax.weighting import task_grads as tg
from mtlgen_jax.weighting.base import GradientWeighting
from mtlgen_jax.weighting.registry import register


@register
@dataclasses.dataclass(frozen=True)
class IMTLG(GradientWeighting):
    """IMTL-G (Liu et al., ICLR 2021, "Towards impartial multi-task learning").

    Finds d = sum_k a_k g_k with sum_k a_k = 1 whose projections onto every unit task
    gradient u_k = g_k / |g_k| are equal, <d, u_1> = ... = <d, u_K>. In closed form,
    with D the rows g_1 - g_k and U the rows u_1 - u_k (k = 2..K),
    a_{2..K} = g_1 U^T (D U^T)^{-1} and a_1 = 1 - sum a_{2..K}. Everything is in Gram
    coordinates: D U^T = E G N E^T and g_1 U^T = (G N E^T)[0] with E = [1 | -I] and
    N = diag(1 / |g_k|). A singular system (e.g. parallel gradients) is solved by the
    pseudo-inverse; the residual metric shows how far the projections then differ.
    The loss-scale part of IMTL (IMTL-L) is not included.

    Metrics:
      solver_residual: max_k |<d, u_k> - mean| / max_k |<d, u_k>| over tasks with a
        nonzero gradient (0 when the projections are equal).
    """

    name = "imtl"

    def weigh(self, gram, losses, state, rng):
        k = self.num_tasks
        if k == 1:
            return jnp.ones((1,), jnp.float32), state, {"solver_residual": jnp.zeros(())}
        g = tg.normalize_gram(gram)
        norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))  # [K]
        inv_norms = tg.safe_divide(1.0, norms)
        e = jnp.concatenate([jnp.ones((k - 1, 1)), -jnp.eye(k - 1)], axis=1)  # [K-1, K]
        gne = (g * inv_norms[None, :]) @ e.T  # [K, K-1] = G N E^T
        du = e @ gne  # [K-1, K-1] D U^T
        rest = gne[0] @ jnp.linalg.pinv(du)  # [K-1]
        alpha = jnp.concatenate([1.0 - jnp.sum(rest, keepdims=True), rest])  # [K]

        proj = (g @ alpha) * inv_norms  # [K] <d, u_k>
        valid = norms > 0
        mean = tg.safe_divide(jnp.sum(jnp.where(valid, proj, 0.0)), jnp.sum(valid))
        spread = jnp.max(jnp.where(valid, jnp.abs(proj - mean), 0.0))
        scale = jnp.max(jnp.where(valid, jnp.abs(proj), 0.0))
        return alpha, state, {"solver_residual": tg.safe_divide(spread, scale)}
