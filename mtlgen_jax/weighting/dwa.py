"""Dynamic weight average (`dwa`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from mtlgen_jax.weighting.base import LossWeighting, check_int, check_real
from mtlgen_jax.weighting.registry import register


@register
@dataclasses.dataclass(frozen=True)
class DynamicWeightAverage(LossWeighting):
    """Dynamic weight average (Liu, Johns & Davison, CVPR 2019, "End-to-end MTL with attention").

    w_k = K softmax_k(r_k / T) with r_k = Lbar_k(t-1) / Lbar_k(t-2), the ratio of a
    task's mean loss over the last two completed windows; w = 1 until two windows are
    complete. The paper averages over epochs; we have no epochs, so a window is
    `period` consecutive calls (the default 1 uses raw per-step losses, which are
    noisy for diffusion losses: set `period` to a few hundred steps to get the
    paper's per-epoch behaviour). Weights sum to K.

    Attributes:
      temperature: T > 0 (paper: 2).
      period: number of calls averaged into one window (>= 1).
    """

    name = "dwa"
    temperature: float = 2.0
    period: int = 1

    def validate(self):
        check_real(self.name, "temperature", self.temperature, low=0.0, low_open=True)
        check_int(self.name, "period", self.period, low=1)

    def init(self):
        zeros = jnp.zeros((self.num_tasks,), jnp.float32)
        count = jnp.zeros((), jnp.int32)
        return {
            "window_sum": zeros,  # [K] sum of losses in the current window
            "window_count": count,  # calls in the current window
            "last": zeros,  # [K] mean loss of the last completed window
            "before": zeros,  # [K] mean loss of the window before it
            "num_windows": count,  # completed windows (saturates at 2)
        }

    def weigh(self, losses, state, rng):
        ratio = state["last"] / jnp.maximum(state["before"], 1e-12)  # [K]
        dynamic = self.num_tasks * jax.nn.softmax(ratio / self.temperature)
        weights = jnp.where(state["num_windows"] >= 2, dynamic, 1.0)

        window_sum = state["window_sum"] + losses
        window_count = state["window_count"] + 1
        done = window_count >= self.period
        new_state = {
            "window_sum": jnp.where(done, 0.0, window_sum),
            "window_count": jnp.where(done, 0, window_count),
            "last": jnp.where(done, window_sum / window_count, state["last"]),
            "before": jnp.where(done, state["last"], state["before"]),
            "num_windows": jnp.minimum(state["num_windows"] + done, 2).astype(jnp.int32),
        }
        return weights, new_state, {}
