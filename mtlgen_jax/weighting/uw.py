"""Uncertainty weighting (`uw`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from mtlgen_jax.weighting.base import LossWeighting, check_real
from mtlgen_jax.weighting.registry import register


@register
@dataclasses.dataclass(frozen=True)
class UncertaintyWeighting(LossWeighting):
    """Homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

    Learns log-variances s_k of the objective sum_k exp(-s_k) L_k + s_k; the task
    weights are exp(-s_k). The strategy owns s (in its state) and updates it itself
    with Adam on that objective, once per call, after weighting with the current s.
    For fixed losses the stationary point is s_k = log L_k (weight 1 / L_k).

    Attributes:
      lr: Adam learning rate for s.
    """

    name = "uw"
    lr: float = 1e-3

    def validate(self):
        check_real(self.name, "lr", self.lr, low=0.0, low_open=True)

    def _tx(self):
        return optax.adam(self.lr)

    def init(self):
        log_var = jnp.zeros((self.num_tasks,), jnp.float32)
        return {"log_var": log_var, "opt": self._tx().init(log_var)}

    def weigh(self, losses, state, rng):
        log_var = state["log_var"]  # [K]
        weights = jnp.exp(-log_var)
        grad = 1.0 - weights * losses  # d/ds_k of exp(-s_k) L_k + s_k
        updates, opt = self._tx().update(grad, state["opt"], log_var)
        new_state = {"log_var": optax.apply_updates(log_var, updates), "opt": opt}
        return weights, new_state, {}
