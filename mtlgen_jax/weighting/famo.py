"""Fast adaptive multitask optimisation (`famo`)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mtlgen_jax.weighting.base import LossWeighting, check_real
from mtlgen_jax.weighting.registry import register


@register
@dataclasses.dataclass(frozen=True)
class FAMO(LossWeighting):
    """FAMO (Liu, Liang, Chen & Liu, NeurIPS 2023, "FAMO: Fast adaptive multitask optimization").

    With z = softmax(xi) and D_k = L_k - min_loss (floored at `eps`), the update is the
    gradient of sum_k z_k log D_k normalised by c = sum_k z_k / D_k, i.e. weights
    w_k = z_k / (c D_k) (they sum to 1). The logits xi are learned so that the
    log-losses decrease at equal rates: between consecutive calls, with
    delta_k = log D_k(prev) - log D_k(now) (how much task k improved), xi takes an
    Adam step (L2 weight decay as in the paper's torch.optim.Adam) along
    d(z . delta)/d xi, which moves weight toward the tasks that improved least.
    The official code re-evaluates the losses on the same batch after the update; we
    compare consecutive calls (consecutive batches), so the state keeps the previous
    losses and no extra forward pass is needed.

    The logit weight decay gamma of the official experiments: NYU-v2, CelebA and QM9
    1e-3 (our default), Cityscapes 0.01, the two-task toy 0 (its script: the objective
    does not change); ``experiments/toy.py`` runs the toy with 0.

    Attributes:
      lr: gamma, Adam learning rate of the logits (paper: 0.025).
      weight_decay: L2 decay of the logits (paper: 1e-3).
      min_loss: a known lower bound of the losses (0 for diffusion MSE losses).
      eps: floor of L - min_loss (paper: 1e-8).
    """

    name = "famo"
    lr: float = 0.025
    weight_decay: float = 1e-3
    min_loss: float = 0.0
    eps: float = 1e-8

    def validate(self):
        check_real(self.name, "lr", self.lr, low=0.0, low_open=True)
        check_real(self.name, "weight_decay", self.weight_decay, low=0.0)
        check_real(self.name, "min_loss", self.min_loss)
        check_real(self.name, "eps", self.eps, low=0.0, low_open=True)

    def _tx(self):
        return optax.chain(optax.add_decayed_weights(self.weight_decay), optax.adam(self.lr))

    def init(self):
        logits = jnp.zeros((self.num_tasks,), jnp.float32)
        return {
            "logits": logits,  # [K] xi
            "prev_losses": jnp.zeros((self.num_tasks,), jnp.float32),  # [K]
            "step": jnp.zeros((), jnp.int32),  # calls so far
            "opt": self._tx().init(logits),
        }

    def weigh(self, losses, state, rng):
        log_d = jnp.log(jnp.maximum(losses - self.min_loss, self.eps))  # [K]
        prev_log_d = jnp.log(jnp.maximum(state["prev_losses"] - self.min_loss, self.eps))
        delta = prev_log_d - log_d  # [K] improvement of each task since the last call
        z = jax.nn.softmax(state["logits"])
        grad = z * (delta - jnp.vdot(z, delta))  # softmax Jacobian^T delta
        updates, opt = self._tx().update(grad, state["opt"], state["logits"])
        has_prev = state["step"] > 0
        logits = jnp.where(has_prev, optax.apply_updates(state["logits"], updates), state["logits"])
        opt = jax.tree.map(lambda new, old: jnp.where(has_prev, new, old), opt, state["opt"])

        z = jax.nn.softmax(logits)
        scaled = z * jnp.exp(-log_d)  # z_k / D_k
        weights = scaled / jnp.sum(scaled)
        new_state = {
            "logits": logits,
            "prev_losses": losses,
            "step": state["step"] + 1,
            "opt": opt,
        }
        return weights, new_state, {}
