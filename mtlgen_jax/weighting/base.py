"""The strategy interface: `Strategy`, its two kinds, `WeightingOutput`, hparam checks.

A strategy is a frozen dataclass holding `num_tasks` and its hyperparameters (so it is
hashable and can be closed over by a jitted step). `apply` is pure: every strategy
returns task weights `w` [K] such that the combined update is `sum_k w_k g_k`, which
`apply` forms from `task_grads` when they are given.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from mtlgen_jax.weighting import task_grads as tg

PyTree = Any
State = Any  # a pytree of jnp arrays with fixed shapes and dtypes
Metrics = dict[str, jax.Array]


@struct.dataclass
class WeightingOutput:
    """What `Strategy.apply` returns."""

    update: PyTree  # like ONE task's gradient (task axis removed); None without task_grads
    weights: jax.Array  # [K] float32: update == sum_k weights[k] * task_grads[k]
    state: State  # same structure, shapes and dtypes as `strategy.init()`
    metrics: Metrics  # scalar float32 arrays; the keys are fixed per strategy


def check_real(
    strategy: str,
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """Returns `value` as a float, or raises ValueError naming it and its valid range."""
    parts = []
    if low is not None:
        parts.append(f"{name} {'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{name} <= {high}")
    valid = " and ".join(parts) or f"{name} finite"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        raise ValueError(f"{strategy}: {name}={value!r} is out of range; valid: {valid}")
    return float(value)


def check_int(strategy: str, name: str, value: Any, *, low: int, choices=None) -> int:
    """Returns `value` as an int >= low (and in `choices` if given), or raises ValueError."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
    if ok and choices is not None:
        ok = value in choices
    if not ok:
        valid = f"one of {tuple(choices)}" if choices is not None else f"an integer >= {low}"
        raise ValueError(f"{strategy}: {name}={value!r} is out of range; valid: {valid}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Strategy:
    """Base of every weighting strategy.

    Attributes:
      num_tasks: K, the number of tasks (>= 1).
      name: the registry name (class attribute).
      uses_task_grads: False if `apply` only needs the losses (class attribute).
    """

    num_tasks: int
    name: ClassVar[str] = ""
    uses_task_grads: ClassVar[bool] = False

    def __post_init__(self):
        check_int(self.name, "num_tasks", self.num_tasks, low=1)
        self.validate()

    def validate(self) -> None:
        """Checks the hyperparameters; subclasses raise ValueError on a bad value."""

    def init(self) -> State:
        """Returns the initial strategy state (a pytree of arrays; {} if stateless)."""
        return {}

    def apply(
        self, losses: jax.Array, task_grads: PyTree | None, state: State, rng: jax.Array
    ) -> WeightingOutput:
        """Combines the task losses (and gradients) into weights and an update.

        Args:
          losses: [K] per-task losses.
          task_grads: a pytree whose leaves have a leading task axis K (or a flat
            [K, P] array), or None.
          state: the strategy state from `init()` or a previous `apply`.
          rng: a PRNG key (used by randomised strategies only).

        Returns:
          A `WeightingOutput`; its `update` is None when `task_grads` is None.
        """
        losses = jnp.asarray(losses, jnp.float32)
        if losses.shape != (self.num_tasks,):
            raise ValueError(
                f"{self.name}: losses must have shape ({self.num_tasks},), got {losses.shape}"
            )
        if task_grads is not None:
            tg.check_task_axis(task_grads, self.num_tasks)
        weights, state, metrics = self._weigh(losses, task_grads, state, rng)
        weights = weights.astype(jnp.float32)
        update = None if task_grads is None else tg.combine(weights, task_grads)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        return WeightingOutput(update=update, weights=weights, state=state, metrics=metrics)

    def _weigh(self, losses, task_grads, state, rng) -> tuple[jax.Array, State, Metrics]:
        raise NotImplementedError

    def _require_rng(self, rng) -> None:
        if rng is None:
            raise ValueError(f"{self.name}: needs an rng key, got None")


@dataclasses.dataclass(frozen=True)
class LossWeighting(Strategy):
    """A strategy whose weights depend on the losses (and its state) only.

    The train step may take the weights as the cotangent of the per-task losses:
    `vjp(out.weights)` is then the combined gradient `sum_k w_k grad(L_k)`.
    """

    uses_task_grads: ClassVar[bool] = False

    def _weigh(self, losses, task_grads, state, rng):
        return self.weigh(losses, state, rng)

    def weigh(self, losses: jax.Array, state: State, rng) -> tuple[jax.Array, State, Metrics]:
        """Returns (weights [K], new state, metrics) from losses [K]."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class GradientWeighting(Strategy):
    """A strategy whose weights come from the per-task gradients' Gram matrix.

    Every method here combines the task gradients linearly, so it only needs the
    K x K Gram matrix `G = g g^T` (computed leaf by leaf, never as a [K, P] matrix)
    to find the weights; `apply` then forms `sum_k w_k g_k`.
    """

    uses_task_grads: ClassVar[bool] = True

    def __post_init__(self):
        check_int(self.name, "num_tasks", self.num_tasks, low=1)
        if self.num_tasks < 2:
            raise ValueError(
                f"{self.name} combines per-task gradients and needs at least 2 tasks; got "
                f"num_tasks={self.num_tasks}. With one task use weighting 'ew' (or add tasks)."
            )
        self.validate()

    def _weigh(self, losses, task_grads, state, rng):
        if task_grads is None:
            raise ValueError(f"{self.name}: needs per-task gradients, got task_grads=None")
        return self.weigh(tg.gram(task_grads), losses, state, rng)

    def apply_gram(
        self, gram: jax.Array, losses: jax.Array, state: State, rng: jax.Array
    ) -> WeightingOutput:
        """Like `apply`, from a Gram matrix the caller formed (``update`` is None).

        For callers that hold the task gradients in pieces: the data-parallel step in
        representation mode sums each device's Gram of its examples' representation
        gradients (``lax.psum``), then combines the gradients itself with ``weights``.

        Args:
          gram: [K, K] with gram[i, j] = <g_i, g_j> (symmetric, positive semidefinite).
          losses: [K] per-task losses.
          state, rng: as in `apply`.
        """
        losses = jnp.asarray(losses, jnp.float32)
        gram = jnp.asarray(gram, jnp.float32)
        k = self.num_tasks
        if losses.shape != (k,) or gram.shape != (k, k):
            raise ValueError(f"{self.name}: need losses ({k},) and gram ({k}, {k}); got "
                             f"{losses.shape} and {gram.shape}")
        weights, state, metrics = self.weigh(gram, losses, state, rng)
        metrics = {key: jnp.asarray(v, jnp.float32) for key, v in metrics.items()}
        return WeightingOutput(update=None, weights=weights.astype(jnp.float32), state=state,
                               metrics=metrics)

    def weigh(
        self, gram: jax.Array, losses: jax.Array, state: State, rng
    ) -> tuple[jax.Array, State, Metrics]:
        """Returns (weights [K], new state, metrics) from the Gram matrix [K, K]."""
        raise NotImplementedError
