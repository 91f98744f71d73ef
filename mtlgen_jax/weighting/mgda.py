"""Multiple-gradient descent algorithm (`mgda`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtlgen_jax.weighting import solvers
from mtlgen_jax.weighting import task_grads as tg
from mtlgen_jax.weighting.base import GradientWeighting, check_int
from mtlgen_jax.weighting.registry import register


def min_norm_weights(gram_hat: jax.Array, w0: jax.Array, num_iters: int):
    """Solves min_{w in simplex} w^T G w by accelerated projected gradient.

    Args:
      gram_hat: [K, K] normalised Gram matrix (see `task_grads.normalize_gram`).
      w0: [K] starting point.
      num_iters: solver iterations.

    Returns:
      (w [K], gap): gap = w^T G w - min_k (G w)_k is the Frank-Wolfe duality gap in
      units of the mean squared gradient norm; it bounds the suboptimality of w and is
      0 exactly at the min-norm point.
    """
    step = solvers.projected_gradient_step(
        lambda w: gram_hat @ w, solvers.project_simplex, solvers.max_eigenvalue(gram_hat)
    )
    objective = lambda w: 0.5 * jnp.vdot(w, gram_hat @ w)
    w = solvers.monotone_accelerated(step, objective, solvers.project_simplex(w0), num_iters)
    gw = gram_hat @ w  # [K]
    return w, jnp.maximum(jnp.vdot(w, gw) - jnp.min(gw), 0.0)


@register
@dataclasses.dataclass(frozen=True)
class MGDA(GradientWeighting):
    """MGDA (Sener & Koltun, NeurIPS 2018, "Multi-task learning as multi-objective optimization").

    The update is the min-norm point of the convex hull of the task gradients,
    d = sum_k w_k g_k with w = argmin_{w in simplex} |sum_k w_k g_k|^2 (weights sum
    to 1; d = 0 at a Pareto-stationary point). Solved on the normalised Gram matrix
    by `num_iters` accelerated projected-gradient steps on the simplex (see
    `solvers.monotone_accelerated`), warm-started from the
    previous call's weights (state). No gradient normalisation (LibMTL's default).

    Attributes:
      num_iters: solver iterations.

    Metrics:
      solver_residual: the Frank-Wolfe duality gap (0 at the exact solution).
    """

    name = "mgda"
    num_iters: int = 100

    def validate(self):
        check_int(self.name, "num_iters", self.num_iters, low=1)

    def init(self):
        return {"weights": jnp.full((self.num_tasks,), 1.0 / self.num_tasks, jnp.float32)}

    def weigh(self, gram, losses, state, rng):
        uniform = jnp.full((self.num_tasks,), 1.0 / self.num_tasks, jnp.float32)
        w0 = solvers.valid_warm_start(state["weights"], uniform)
        w, gap = min_norm_weights(tg.normalize_gram(gram), w0, self.num_iters)
        return w, {"weights": w}, {"solver_residual": gap}
