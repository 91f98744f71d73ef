"""Stateless loss weightings: equal (`ew`), fixed (`static`), random (`rlw`), geometric (`gls`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from mtlgen_jax.weighting.base import LossWeighting, check_real
from mtlgen_jax.weighting.registry import register


@register
@dataclasses.dataclass(frozen=True)
class EqualWeighting(LossWeighting):
    """Equal weighting: the plain sum of task losses, w_k = 1 (as LibMTL's EW)."""

    name = "ew"

    def weigh(self, losses, state, rng):
        return jnp.ones((self.num_tasks,), jnp.float32), state, {}


@register
@dataclasses.dataclass(frozen=True)
class StaticWeighting(LossWeighting):
    """Fixed, user-given weights: sum_k w_k L_k.

    Attributes:
      weights: K non-negative floats (required).
    """

    name = "static"
    weights: Sequence[float] | None = None

    def validate(self):
        if self.weights is None or isinstance(self.weights, str | bytes):
            raise ValueError(f"static: weights={self.weights!r}; give a list of K floats")
        values = tuple(self.weights)
        if len(values) != self.num_tasks:
            raise ValueError(
                f"static: weights={values!r} has length {len(values)}; "
                f"valid: exactly num_tasks={self.num_tasks} values"
            )
        values = tuple(check_real(self.name, "weights[i]", v, low=0.0) for v in values)
        object.__setattr__(self, "weights", values)  # a tuple keeps the strategy hashable

    def weigh(self, losses, state, rng):
        return jnp.asarray(self.weights, jnp.float32), state, {}


@register
@dataclasses.dataclass(frozen=True)
class RandomLossWeighting(LossWeighting):
    """Random loss weighting (Lin et al., 2022, "Reasonable effectiveness of random weighting").

    Each call draws w = softmax(z), z ~ N(0, I_K), from `rng`; the weights sum to 1
    (as in the paper and LibMTL), so the update is a random convex combination.
    """

    name = "rlw"

    def weigh(self, losses, state, rng):
        self._require_rng(rng)
        z = jax.random.normal(rng, (self.num_tasks,), jnp.float32)
        return jax.nn.softmax(z), state, {}


@register
@dataclasses.dataclass(frozen=True)
class GeometricLossStrategy(LossWeighting):
    """Geometric loss strategy (Chennupati et al., 2019): minimise (prod_k L_k)^(1/K).

    Its gradient is sum_k w_k grad L_k with w_k = (prod_j L_j)^(1/K) / (K L_k), so the
    weights are computed in log space. Losses must be positive; they are floored at
    `min_loss` so a zero loss gives finite weights.

    Attributes:
      min_loss: floor applied to the losses (> 0).
    """

    name = "gls"
    min_loss: float = 1e-12

    def validate(self):
        check_real(self.name, "min_loss", self.min_loss, low=0.0, low_open=True)

    def weigh(self, losses, state, rng):
        safe = jnp.maximum(losses, self.min_loss)  # [K]
        geo_mean = jnp.exp(jnp.mean(jnp.log(safe)))
        return geo_mean / (self.num_tasks * safe), state, {}
