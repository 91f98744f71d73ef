"""GradNorm (`gradnorm`)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import optax

from mtlgen_jax.weighting import task_grads as tg
from mtlgen_jax.weighting.base import GradientWeighting, check_real
from mtlgen_jax.weighting.registry import register


@register
@dataclasses.dataclass(frozen=True)
class GradNorm(GradientWeighting):
    """GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018).

    Learnable weights w (state, initially 1, summing to K) scale the task gradients;
    the weighted norms G_k = w_k |g_k| are pulled toward the common target
    mean(G) * r_k^alpha, where r_k = (L_k / L_k(0)) / mean_j (L_j / L_j(0)) is the
    task's relative inverse training rate and L(0) the losses of the first call.
    Each call returns the update sum_k w_k g_k with the current w, then takes an Adam
    step on L_grad = sum_k |G_k - target_k| (target held constant, as in the paper)
    and renormalises w (clipped at 0) to sum to K.

    The norms |g_k| are taken over the parameters whose per-task gradients the train
    step passes (the shared parameters); the paper uses the last shared layer only.

    Attributes:
      alpha: restoring-force strength (paper: 1.5).
      lr: Adam learning rate of the weights.

    Metrics:
      gradnorm_loss: L_grad before the weight step.
    """

    name = "gradnorm"
    alpha: float = 1.5
    lr: float = 1e-2

    def validate(self):
        check_real(self.name, "alpha", self.alpha, low=0.0)
        check_real(self.name, "lr", self.lr, low=0.0, low_open=True)

    def _tx(self):
        return optax.adam(self.lr)

    def init(self):
        weights = jnp.ones((self.num_tasks,), jnp.float32)
        return {
            "weights": weights,  # [K], sums to K
            "initial_losses": jnp.zeros((self.num_tasks,), jnp.float32),  # [K] L(0)
            "step": jnp.zeros((), jnp.int32),
            "opt": self._tx().init(weights),
        }

    def weigh(self, gram, losses, state, rng):
        k = self.num_tasks
        weights = state["weights"]  # [K]
        initial = jnp.where(state["step"] == 0, losses, state["initial_losses"])
        ratio = tg.safe_divide(losses, initial)  # [K] L_k / L_k(0)
        rate = tg.safe_divide(ratio, jnp.mean(ratio))  # [K] r_k
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))  # [K] |g_k|
        weighted = weights * norms  # [K] G_k
        target = jnp.mean(weighted) * rate**self.alpha
        gradnorm_loss = jnp.sum(jnp.abs(weighted - target))
        grad = jnp.sign(weighted - target) * norms  # d L_grad / d w_k

        updates, opt = self._tx().update(grad, state["opt"], weights)
        new_weights = jnp.maximum(optax.apply_updates(weights, updates), 0.0)
        total = jnp.sum(new_weights)
        new_weights = jnp.where(total > 0, k * new_weights / jnp.where(total > 0, total, 1.0), 1.0)
        new_state = {
            "weights": new_weights,
            "initial_losses": initial,
            "step": jnp.minimum(state["step"] + 1, 1),
            "opt": opt,
        }
        # All weights clipped to 0: restart from equal weights, and say so (a metric).
        return weights, new_state, {"gradnorm_loss": gradnorm_loss,
                                    "weights_reset": (total <= 0).astype(jnp.float32)}
