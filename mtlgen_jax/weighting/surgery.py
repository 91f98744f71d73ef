"""Pairwise gradient surgery: PCGrad (`pcgrad`) and Gradient Vaccine (`gradvac`).

Both edit each task's gradient against the others, visited in a random order. Every
edited gradient stays a linear combination of the original ones, g_i' = sum_m C[i, m]
g_m, so the whole procedure runs on the coefficient matrix C [K, K] and the Gram
matrix: <g_i', g_j> = (C G)[i, j] and |g_i'|^2 = (C G C^T)[i, i]. All K tasks do their
p-th edit at once (each row of C evolves independently), so the loop has K - 1 steps.
The update is sum_i g_i', i.e. weights C.sum(0).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtlgen_jax.weighting import task_grads as tg
from mtlgen_jax.weighting.base import GradientWeighting, check_real
from mtlgen_jax.weighting.registry import register


def partner_order(rng: jax.Array, num_tasks: int) -> jax.Array:
    """Row i: a uniformly random order of the tasks j != i. Shape [K, K - 1] int32."""
    keys = jax.random.uniform(rng, (num_tasks, num_tasks)) + 2.0 * jnp.eye(num_tasks)
    return jnp.argsort(keys, axis=1)[:, : num_tasks - 1].astype(jnp.int32)  # i sorts last


def conflict_fraction(gram: jax.Array) -> jax.Array:
    """Fraction of ordered task pairs i != j whose gradients conflict (<g_i, g_j> < 0)."""
    k = gram.shape[0]
    if k == 1:
        return jnp.zeros((), jnp.float32)
    off_diagonal = ~jnp.eye(k, dtype=bool)
    return jnp.sum((gram < 0) & off_diagonal) / (k * (k - 1))


@register
@dataclasses.dataclass(frozen=True)
class PCGrad(GradientWeighting):
    """PCGrad (Yu et al., NeurIPS 2020, "Gradient surgery for multi-task learning").

    For each task i and each other task j in a random order (drawn from `rng`): if
    <g_i', g_j> < 0, project g_i' onto the normal plane of g_j,
    g_i' -= <g_i', g_j> / |g_j|^2 g_j. The update is sum_i g_i' (as the paper and
    LibMTL). Non-conflicting gradients are left unchanged (then the update is their
    sum, weights 1).

    Metrics:
      conflict_fraction: share of task pairs with negative inner product.
    """

    name = "pcgrad"

    def weigh(self, gram, losses, state, rng):
        self._require_rng(rng)
        k = self.num_tasks
        if k == 1:  # no other task to edit against
            return jnp.ones((1,), jnp.float32), state, {"conflict_fraction": jnp.zeros(())}
        g = tg.normalize_gram(gram)
        rows = jnp.arange(k)
        order = partner_order(rng, k)
        sq_norms = jnp.diag(g)  # [K]

        def edit(p, coef):  # coef [K, K]: row i holds g_i' in the basis g
            j = order[:, p]  # [K] partner of each task at position p
            dots = (coef @ g)[rows, j]  # [K] <g_i', g_j>
            step = jnp.where(dots < 0, tg.safe_divide(dots, sq_norms[j]), 0.0)
            return coef.at[rows, j].add(-step)

        coef = jax.lax.fori_loop(0, k - 1, edit, jnp.eye(k, dtype=jnp.float32))
        return coef.sum(axis=0), state, {"conflict_fraction": conflict_fraction(gram)}


@register
@dataclasses.dataclass(frozen=True)
class GradVac(GradientWeighting):
    """Gradient Vaccine (Wang, Tsvetkov, Firat & Cao, ICLR 2021).

    Keeps an EMA target phi_ij of the cosine similarity between tasks i and j (state,
    initially 0). For each task i and each other task j in a random order: with
    rho = cos(g_i', g_j), if rho < phi_ij, g_i' is moved toward g_j just enough to
    reach cosine phi_ij:
        g_i' += |g_i'| (phi sqrt(1 - rho^2) - rho sqrt(1 - phi^2)) / (|g_j| sqrt(1 - phi^2)) g_j
    then phi_ij <- (1 - beta) phi_ij + beta rho. The update is sum_i g_i' (LibMTL;
    whole-model granularity). With phi = 0 this is exactly PCGrad's projection.

    Attributes:
      beta: EMA rate of the targets (LibMTL default 0.5; the paper uses 1e-2).

    Metrics:
      conflict_fraction: share of task pairs with negative inner product.
    """

    name = "gradvac"
    beta: float = 0.5

    def validate(self):
        check_real(self.name, "beta", self.beta, low=0.0, high=1.0)

    def init(self):
        return {"target_cos": jnp.zeros((self.num_tasks, self.num_tasks), jnp.float32)}

    def weigh(self, gram, losses, state, rng):
        self._require_rng(rng)
        k = self.num_tasks
        if k == 1:
            return jnp.ones((1,), jnp.float32), state, {"conflict_fraction": jnp.zeros(())}
        g = tg.normalize_gram(gram)
        rows = jnp.arange(k)
        order = partner_order(rng, k)
        norms = jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))  # [K] |g_j|

        def edit(p, carry):
            coef, target = carry  # [K, K] coefficients, [K, K] target cosines
            j = order[:, p]
            cg = coef @ g  # [K, K]
            norm_i = jnp.sqrt(jnp.maximum(jnp.sum(cg * coef, axis=1), 0.0))  # |g_i'|
            norm_j = norms[j]
            valid = (norm_i > 0) & (norm_j > 0)
            rho = jnp.clip(tg.safe_divide(cg[rows, j], norm_i * norm_j), -1.0, 1.0)
            phi = target[rows, j]
            sin_rho = jnp.sqrt(jnp.maximum(1.0 - rho**2, 0.0))
            sin_phi = jnp.sqrt(jnp.maximum(1.0 - phi**2, 1e-8))  # phi -> 1 would need w -> inf
            step = norm_i * (phi * sin_rho - rho * sin_phi)
            step = tg.safe_divide(step, norm_j * sin_phi)
            coef = coef.at[rows, j].add(jnp.where(valid & (rho < phi), step, 0.0))
            ema = (1.0 - self.beta) * phi + self.beta * rho
            target = target.at[rows, j].set(jnp.where(valid, ema, phi))
            return coef, target

        init = (jnp.eye(k, dtype=jnp.float32), state["target_cos"])
        coef, target = jax.lax.fori_loop(0, k - 1, edit, init)
        metrics = {"conflict_fraction": conflict_fraction(gram)}
        return coef.sum(axis=0), {"target_cos": target}, metrics
