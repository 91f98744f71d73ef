"""UPGrad (`upgrad`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtlgen_jax.weighting import solvers
from mtlgen_jax.weighting.base import GradientWeighting, check_int, check_real
from mtlgen_jax.weighting.registry import register


def dual_cone_weights(a: jax.Array, lower: jax.Array, v0: jax.Array, num_iters: int):
    """Solves min_{v >= u} v^T A v / 2 for every column u of `lower`.

    For A = g g^T, g^T v* is the projection of g^T u onto the dual cone
    {x : <g_k, x> >= 0 for all k} (Quinton & Rey, 2024, Prop. 1). Each column is
    solved by accelerated projected gradient (`solvers.monotone_accelerated`).

    Args:
      a: [K, K] symmetric positive definite.
      lower: [K, M] lower bounds, one problem per column.
      v0: [K, M] starting points.
      num_iters: solver iterations.

    Returns:
      (v [K, M], residual): residual = max |v - max(v - A v, u)|, the projected
      gradient map over all problems, 0 exactly at their KKT points.
    """
    lipschitz = solvers.max_eigenvalue(a)
    objective = lambda v: 0.5 * jnp.vdot(v, a @ v)

    def solve_one(u, v_start):  # [K], [K] -> [K]
        project = lambda v: jnp.maximum(v, u)
        step = solvers.projected_gradient_step(lambda v: a @ v, project, lipschitz)
        return solvers.monotone_accelerated(step, objective, project(v_start), num_iters)

    v = jax.vmap(solve_one, in_axes=1, out_axes=1)(lower, v0)
    return v, jnp.max(jnp.abs(v - jnp.maximum(v - a @ v, lower)))


@register
@dataclasses.dataclass(frozen=True)
class UPGrad(GradientWeighting):
    """UPGrad (Quinton & Rey, 2024, "Jacobian descent for multi-objective optimization").

    Projects each task gradient g_i onto the dual cone of all task gradients (the
    directions that conflict with none of them) and averages the projections. In
    Gram coordinates the projection of g^T u is g^T v with v = argmin_{v >= u}
    v^T G v, here with u = e_i / K (mean preference, as torchjd). As torchjd, G is
    normalised by its trace and regularised with `ridge` * I so the QPs are strongly
    convex. Non-conflicting gradients give their mean; the update never conflicts
    with any task (up to the ridge and the solver residual). The K QPs are solved
    side by side by accelerated projected gradient, warm-started from the previous
    call (state).

    Attributes:
      num_iters: solver iterations.
      ridge: regulariser added to the trace-normalised Gram matrix (torchjd: 1e-4).

    Metrics:
      solver_residual: projected-gradient map of the QPs, times K (weight units).
    """

    name = "upgrad"
    num_iters: int = 100
    ridge: float = 1e-4

    def validate(self):
        check_int(self.name, "num_iters", self.num_iters, low=1)
        check_real(self.name, "ridge", self.ridge, low=0.0, low_open=True)

    def init(self):
        return {"weights": jnp.eye(self.num_tasks, dtype=jnp.float32) / self.num_tasks}

    def weigh(self, gram, losses, state, rng):
        k = self.num_tasks
        g = 0.5 * (gram + gram.T)
        trace = jnp.trace(g)
        g = jnp.where(trace > 0, g / jnp.where(trace > 0, trace, 1.0), 0.0)
        a = g + self.ridge * jnp.eye(k)
        lower = jnp.eye(k, dtype=jnp.float32) / k  # column i: e_i / K
        v0 = solvers.valid_warm_start(state["weights"], lower)
        v, residual = dual_cone_weights(a, lower, v0, self.num_iters)  # [K, K]
        return v.sum(axis=1), {"weights": v}, {"solver_residual": k * residual}
