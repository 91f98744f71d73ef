"""Conflict-averse gradient descent (`cagrad`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtlgen_jax.weighting import solvers
from mtlgen_jax.weighting import task_grads as tg
from mtlgen_jax.weighting.base import GradientWeighting, check_int, check_real
from mtlgen_jax.weighting.registry import register

_SMOOTHING = 1e-8  # added under the square root of |g_w|^2 (normalised units), as LibMTL


def cagrad_dual(gram_hat: jax.Array, radius: jax.Array, w0: jax.Array, num_iters: int):
    """Solves min_{w in simplex} F(w) = <g_w, g_0> + radius |g_w| (CAGrad's dual).

    g_w = sum_k w_k g_k and g_0 is the mean gradient. F is convex but not smooth where
    g_w = 0, so the descent map majorises the norm at its argument x,
    |g_w| <= (|g_w|^2 / s + s) / 2 with s = |g_x| (equality at w = x), and takes one
    projected-gradient step of length 1 / L_x on that smooth quadratic, L_x =
    radius * lambda_max(G) / s. A descent step on a majoriser tight at x decreases F
    (majorisation-minimisation); `solvers.monotone_accelerated` adds momentum and
    keeps that guarantee.

    Args:
      gram_hat: [K, K] normalised Gram matrix.
      radius: c |g_0| in the same units.
      w0: [K] starting point.
      num_iters: iterations.

    Returns:
      (w [K], gap): gap = <grad F(w), w> - min_k grad F(w)_k, the Frank-Wolfe duality
      gap, an upper bound on F(w) - min F (0 at the solution).
    """
    k = gram_hat.shape[0]
    g0_dots = gram_hat @ jnp.full((k,), 1.0 / k, gram_hat.dtype)  # [K] <g_k, g_0>
    lam_max = solvers.max_eigenvalue(gram_hat)

    def norm_of(w):  # |g_w|, smoothed
        return jnp.sqrt(jnp.maximum(jnp.vdot(w, gram_hat @ w), 0.0) + _SMOOTHING)

    def grad_of(w):
        return g0_dots + radius * (gram_hat @ w) / norm_of(w)

    def step(w):
        lipschitz = jnp.maximum(radius * lam_max / norm_of(w), solvers.MIN_LIPSCHITZ)
        return solvers.project_simplex(w - grad_of(w) / lipschitz)

    objective = lambda w: jnp.vdot(g0_dots, w) + radius * norm_of(w)
    w = solvers.monotone_accelerated(step, objective, solvers.project_simplex(w0), num_iters)
    grad = grad_of(w)
    return w, jnp.maximum(jnp.vdot(grad, w) - jnp.min(grad), 0.0)


@register
@dataclasses.dataclass(frozen=True)
class CAGrad(GradientWeighting):
    """CAGrad (Liu, Liu, Jin, Stone & Liu, NeurIPS 2021, "Conflict-averse gradient descent").

    Finds the update d maximising the worst task improvement min_k <g_k, d> within a
    ball |d - g_0| <= c |g_0| around the mean gradient g_0. Via the dual,
    d = g_0 + (c |g_0| / |g_w|) g_w with w the solution of `cagrad_dual` (warm-started
    from the previous call); d is then divided by 1 + c^2 (rescale=1), 1 + c
    (rescale=2) or kept (rescale=0), as in the paper's code and LibMTL. c = 0 gives
    the mean gradient.

    Attributes:
      c: conflict-aversion radius (>= 0; paper: 0.5; c < 1 converges to the optimum
        of the average loss).
      rescale: 0, 1 or 2 (see above).
      num_iters: solver iterations.

    Metrics:
      solver_residual: the dual's Frank-Wolfe gap (0 at the exact solution).
    """

    name = "cagrad"
    c: float = 0.5
    rescale: int = 1
    num_iters: int = 100

    def validate(self):
        check_real(self.name, "c", self.c, low=0.0)
        check_int(self.name, "rescale", self.rescale, low=0, choices=(0, 1, 2))
        check_int(self.name, "num_iters", self.num_iters, low=1)

    def init(self):
        return {"weights": jnp.full((self.num_tasks,), 1.0 / self.num_tasks, jnp.float32)}

    def weigh(self, gram, losses, state, rng):
        k = self.num_tasks
        g = tg.normalize_gram(gram)
        mean = jnp.full((k,), 1.0 / k, jnp.float32)
        radius = self.c * jnp.sqrt(jnp.maximum(mean @ g @ mean, 0.0))  # c |g_0|
        w, gap = cagrad_dual(
            g, radius, solvers.valid_warm_start(state["weights"], mean), self.num_iters
        )
        gw_norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
        # Far from Pareto stationarity |g_w| ~ 1 here; the floor only bounds the
        # coefficients (and float32 cancellation) when g_w vanishes.
        lam = radius / jnp.maximum(gw_norm, 1e-6)
        weights = mean + lam * w
        weights = weights / {0: 1.0, 1: 1.0 + self.c**2, 2: 1.0 + self.c}[self.rescale]
        return weights, {"weights": w}, {"solver_residual": gap}
