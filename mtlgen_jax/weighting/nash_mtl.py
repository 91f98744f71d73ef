"""Nash-MTL (`nash_mtl`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtlgen_jax.weighting.base import GradientWeighting, check_int, check_real
from mtlgen_jax.weighting.registry import register


def nash_weights(a: jax.Array, alpha0: jax.Array, num_iters: int):
    """Solves a (A alpha) = 1 elementwise, alpha > 0, by damped Newton.

    The equation is the stationarity condition of the strictly convex
    f(alpha) = alpha^T A alpha / 2 - sum_k log alpha_k, a self-concordant function
    (quadratic plus log barrier). Damped Newton steps alpha -= dx / (1 + lambda),
    lambda the Newton decrement, stay inside alpha > 0 and converge from any positive
    start, quadratically once lambda < 1/4 (Nesterov & Nemirovskii).

    Args:
      a: [K, K] symmetric positive definite.
      alpha0: [K] positive start.
      num_iters: Newton steps.

    Returns:
      (alpha [K], residual): residual = max_k |alpha_k (A alpha)_k - 1|.
    """

    def step(_, alpha):
        grad = a @ alpha - 1.0 / alpha  # [K]
        hess = a + jnp.diag(1.0 / alpha**2)  # [K, K]
        dx = jnp.linalg.solve(hess, grad)
        decrement = jnp.sqrt(jnp.maximum(jnp.vdot(grad, dx), 0.0))
        return alpha - dx / (1.0 + decrement)

    alpha = jax.lax.fori_loop(0, num_iters, step, alpha0)
    return alpha, jnp.max(jnp.abs(alpha * (a @ alpha) - 1.0))


@register
@dataclasses.dataclass(frozen=True)
class NashMTL(GradientWeighting):
    """Nash-MTL (Navon et al., ICML 2022, "Multi-task learning as a bargaining game").

    The Nash bargaining update d = sum_k alpha_k g_k solves G alpha = 1 / alpha
    (elementwise, alpha > 0), so every task's directional derivative is inversely
    proportional to its weight: alpha_k <g_k, d> is the same for all k. As the
    authors' code, G is first divided by its Frobenius norm and alpha is used as is.
    A ridge (`ridge` * I on the normalised G) makes a solution exist even when the
    gradients are linearly dependent (it bounds alpha by about 1/sqrt(ridge)). Solved
    by `num_iters` damped Newton steps (see `nash_weights`), warm-started from the
    previous call's alpha (or 1/sqrt(diag) on the first call, exact for orthogonal
    gradients). The paper's optional update-norm clipping is left to the optimiser.

    Attributes:
      num_iters: Newton steps.
      ridge: Tikhonov term on the normalised Gram matrix (> 0).

    Metrics:
      solver_residual: max_k |alpha_k (A alpha)_k - 1| for the regularised A.
    """

    name = "nash_mtl"
    num_iters: int = 30
    ridge: float = 1e-6

    def validate(self):
        check_int(self.name, "num_iters", self.num_iters, low=1)
        check_real(self.name, "ridge", self.ridge, low=0.0, low_open=True)

    def init(self):
        # Zeros mark "no previous solution"; a valid warm start is positive.
        return {"alpha": jnp.zeros((self.num_tasks,), jnp.float32)}

    def weigh(self, gram, losses, state, rng):
        g = 0.5 * (gram + gram.T)
        fro = jnp.sqrt(jnp.sum(g * g))
        g = jnp.where(fro > 0, g / jnp.where(fro > 0, fro, 1.0), 0.0)
        a = g + self.ridge * jnp.eye(self.num_tasks)
        prev = state["alpha"]
        warm = jnp.all(jnp.isfinite(prev) & (prev > 0))
        alpha0 = jnp.where(warm, prev, 1.0 / jnp.sqrt(jnp.diag(a)))
        alpha, residual = nash_weights(a, alpha0, self.num_iters)
        return alpha, {"alpha": alpha}, {"solver_residual": residual}
