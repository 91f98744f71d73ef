"""Fixed-iteration solvers for the small (K x K) inner problems, jit-able.

Every solver runs a fixed number of iterations of a method with a convergence proof
and returns its iterate; callers report a residual of the optimality conditions as a
metric so that an inaccurate solve is visible instead of silently replaced.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

MIN_LIPSCHITZ = 1e-6  # floor of smoothness constants; steps stay finite in float32


def project_simplex(v: jax.Array) -> jax.Array:
    """Euclidean projection of v [K] onto the probability simplex (sort-based)."""
    k = v.shape[-1]
    u = jnp.sort(v)[::-1]  # [K] descending
    css = jnp.cumsum(u) - 1.0
    idx = jnp.arange(1, k + 1, dtype=v.dtype)
    # The condition holds on a prefix of the sorted entries, and for the first in exact
    # arithmetic; the floor at 1 guards against rounding when |v| is huge.
    rho = jnp.maximum(jnp.sum(u - css / idx > 0), 1)
    theta = css[rho - 1] / rho.astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def max_eigenvalue(sym: jax.Array) -> jax.Array:
    """Largest eigenvalue of a symmetric [K, K] matrix (>= 0 for a PSD one)."""
    return jnp.maximum(jnp.linalg.eigvalsh(sym)[-1], 0.0)


def monotone_accelerated(
    step: Callable[[jax.Array], jax.Array],
    objective: Callable[[jax.Array], jax.Array],
    x0: jax.Array,
    num_iters: int,
) -> jax.Array:
    """Accelerates a descent map with Nesterov momentum, never doing worse than it.

    `step` must be a feasible descent map with a convergence guarantee, here a
    projected-gradient step (step 1/L on an L-smooth convex f, or on a majoriser of f
    that is tight at its argument). Each iteration takes the better, by `objective`,
    of step(y) at the FISTA extrapolated point y (Beck & Teboulle, 2009) and the
    plain step(x); momentum restarts whenever the plain step wins. Every iterate is
    thus at least as good as one plain step from the previous iterate, so the plain
    method's guarantee (f decreases monotonically to min f, at rate O(1/k) for
    projected gradient on a smooth convex f over a bounded set) carries over; the
    momentum makes it much faster in practice.

    Args:
      step: feasible descent map x -> x'.
      objective: x -> f(x), a scalar.
      x0: a feasible starting point.
      num_iters: number of iterations (static).

    Returns:
      The last iterate (feasible).
    """

    def body(_, carry):
        x, y, t = carry
        accelerated, plain = step(y), step(x)
        use_accel = objective(accelerated) <= objective(plain)
        x_new = jnp.where(use_accel, accelerated, plain)
        t_new = jnp.where(use_accel, 0.5 * (1.0 + jnp.sqrt(1.0 + 4.0 * t * t)), 1.0)
        momentum = jnp.where(use_accel, (t - 1.0) / t_new, 0.0)
        return x_new, x_new + momentum * (x_new - x), t_new

    x, _, _ = jax.lax.fori_loop(0, num_iters, body, (x0, x0, jnp.ones((), x0.dtype)))
    return x


def projected_gradient_step(
    grad_fn: Callable[[jax.Array], jax.Array],
    project: Callable[[jax.Array], jax.Array],
    lipschitz: jax.Array,
) -> Callable[[jax.Array], jax.Array]:
    """x -> project(x - grad(x) / L), a descent map for an L-smooth convex f.

    L is floored at MIN_LIPSCHITZ: for the normalised problems here (O(1) gradients
    on the simplex or near it) a step of 1 / MIN_LIPSCHITZ already crosses the
    feasible set, so a linear or constant f (L = 0) is handled too.
    """
    inv_l = 1.0 / jnp.maximum(lipschitz, MIN_LIPSCHITZ)
    return lambda x: project(x - inv_l * grad_fn(x))


def valid_warm_start(x: jax.Array, fallback: jax.Array) -> jax.Array:
    """x if it is all finite (a usable previous solution), else `fallback`."""
    return jnp.where(jnp.all(jnp.isfinite(x)), x, fallback)
