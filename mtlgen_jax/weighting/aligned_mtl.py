"""Aligned-MTL (`aligned_mtl`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from mtlgen_jax.weighting import task_grads as tg
from mtlgen_jax.weighting.base import GradientWeighting, check_real
from mtlgen_jax.weighting.registry import register


@register
@dataclasses.dataclass(frozen=True)
class AlignedMTL(GradientWeighting):
    """Aligned-MTL (Senushkin et al., CVPR 2023, "Independent component alignment for MTL").

    Replaces the gradient matrix g [K, P] = U S V^T by the perfectly conditioned
    sigma_min U V^T (all singular values equal to the smallest nonzero one) and sums
    its rows. From the Gram matrix G = U S^2 U^T this is the weight vector
    a = sigma_min U S^-1 U^T 1, update sum_k a_k g_k. Eigenvalues below
    `rcond` * lambda_max are treated as zero (rank-deficient G). Orthogonal gradients
    of equal norm get weights 1 (the plain sum), as in LibMTL.

    Attributes:
      rcond: relative eigenvalue cutoff; float32 eigenvalues below ~1e-6 of the
        largest are noise.

    Metrics:
      rank: number of eigenvalues kept.
    """

    name = "aligned_mtl"
    rcond: float = 1e-5

    def validate(self):
        check_real(self.name, "rcond", self.rcond, low=0.0, high=1.0, low_open=True)

    def weigh(self, gram, losses, state, rng):
        g = tg.normalize_gram(gram)
        eigvals, eigvecs = jnp.linalg.eigh(g)  # ascending; [K], [K, K]
        keep = eigvals > self.rcond * jnp.maximum(eigvals[-1], 0.0)
        keep = keep & (eigvals > 0)
        sigma = jnp.sqrt(jnp.where(keep, eigvals, 1.0))  # [K] singular values
        sigma_min = jnp.min(jnp.where(keep, sigma, jnp.inf))
        sigma_min = jnp.where(jnp.any(keep), sigma_min, 0.0)
        inv_sigma = jnp.where(keep, 1.0 / sigma, 0.0)
        weights = sigma_min * (eigvecs @ (inv_sigma * (eigvecs.T @ jnp.ones_like(eigvals))))
        return weights, state, {"rank": jnp.sum(keep).astype(jnp.float32)}
