"""Training objectives and their samplers, per task: diffusion, regression, bridge.

Each task trains with one objective (``tasks.<name>.objective``), optionally
predicting relative to a cheap estimate ``b`` (``tasks.<name>.residual``): the task's
``start`` -- its trivial baseline (the bicubic upsampling, the gray image, the noisy
input) or something better where one is cheap (inpainting: a smooth multigrid fill of
the hole, +4 dB over the mean fill it is scored against). The
model's output for an example is its task head's output ``h``; every objective
reads it as a clean-image estimate ``x0_hat = h + offset`` except plain diffusion,
whose head predicts ``diffusion.prediction`` (v, eps or x0) as Palette does:

- diffusion: input ``x_t = alpha x0 + sigma eps``; loss ``|h - target|^2`` with the
  target of ``diffusion.prediction`` (v, eps or x0).
- diffusion + residual: same input; ``x0_hat = b + h``; loss
  ``|x0_hat - x0|^2 / max(sigma, RESIDUAL_SIGMA_FLOOR)^2``.
- regression: input zeros at t = 1; ``x0_hat = h`` (``b + h`` with residual); loss
  ``|x0_hat - x0|^2``.
- bridge: input ``x_t = (1 - t) x0 + t b + gamma sqrt(t (1 - t)) eps``;
  ``x0_hat = x_t + h``; loss ``|x0_hat - x0|^2``.

**Diffusion + residual** parametrises the clean-image estimate as ``b + h``: with
a zero head (the heads of residual tasks start at zero) every DDIM/DDPM step's
estimate is ``b``, so an untrained model returns the baseline, and training learns
only the correction. Its loss keeps diffusion's v-weighting (``|v_hat - v|^2 =
|x0_hat - x0|^2 / sigma^2``) with sigma floored at ``RESIDUAL_SIGMA_FLOOR`` so that
nearly clean inputs do not dominate. The other option the literature offers,
diffusing the residual ``x0 - b`` with a noise schedule rescaled to its spread
(ResShift), starts sampling near ``b`` too -- which the bridge below already does,
with one step equal to the network's estimate; so this one keeps the standard
sampler and start (pure noise) and changes only what the head predicts.

**Bridge** (InDI, Delbracio & Milanfar 2023, with a Brownian-bridge noise term):
``x_t = (1 - t) x0 + t b + gamma sqrt(t (1 - t)) eps`` joins the clean image
(t = 0) and the baseline (t = 1); the noise vanishes at both ends, so sampling
starts exactly at ``b``. The network predicts ``x0_hat = x_t + h``. Sampling walks
``t = 1 -> 0`` in ``steps`` equal steps, drawing ``x_s`` from the bridge's posterior
``q(x_s | x_t, x0 = x0_hat)``: mean ``(1-s) x0_hat + s b + (s/t)(x_t - (1-t) x0_hat
- t b)``, variance ``gamma^2 s (t - s) / t``. One step returns ``x0_hat(b, t = 1)``
-- the regression estimate, the fidelity operating point; more steps add detail
(and, with gamma > 0, stochasticity). Training draws t ~ U(0, 1], so the one-step
estimate (t = 1) gets no more training than any other time; ``endpoint_fraction`` of a
task's examples are drawn at t = 1 instead, to keep the fidelity point as well trained
as a one-pass regression while the rest train the later steps. InDI over I2SB (Liu et
al. 2023): I2SB's bridge has the same form but a noise schedule tied to a pretrained diffusion
model's, and its network predicts the noise; InDI's direct x0 prediction makes
the one-step case exactly the residual regression a small CPU budget trains best,
and its posterior step needs no schedule beyond gamma.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from mtlgen_jax import diffusion

OBJECTIVES = ("diffusion", "regression", "bridge")
# v-weighting of residual diffusion: 1 / max(sigma, floor)^2 (weight <= 25 near t = 0).
RESIDUAL_SIGMA_FLOOR = 0.2
# loss='relative': added to the start's mean squared error (a 46 dB start) before dividing,
# unless the task sets relative_floor_db.
RELATIVE_LOSS_EPS = 1e-4


def relative_eps(task) -> float:
    """What ``loss='relative'`` adds to the start's squared error before dividing: the
    squared error of a start ``task.relative_floor_db`` dB from its target (images in
    [-1, 1], peak-to-peak 2), else ``RELATIVE_LOSS_EPS``."""
    floor_db = getattr(task, "relative_floor_db", None)
    return RELATIVE_LOSS_EPS if floor_db is None else 4.0 * 10.0 ** (-floor_db / 10.0)


@flax.struct.dataclass
class TrainInputs:
    """One task's view of a batch: what the model sees and how its output is scored."""

    x_t: jax.Array  # [B, H, W, C] the model's image input
    t: jax.Array  # [B] the model's time input
    target: jax.Array  # [B, H, W, C] what head + offset should equal
    offset: jax.Array  # [B, H, W, C] added to the head's output before the loss
    weight: jax.Array  # [B] per-example loss weight


def bridge_marginal(x0: jax.Array, base: jax.Array, eps: jax.Array, t: jax.Array,
                    gamma: float) -> jax.Array:
    """``x_t = (1 - t) x0 + t b + gamma sqrt(t (1 - t)) eps`` (t: [B])."""
    t = t.reshape(t.shape + (1,) * (x0.ndim - 1))
    return (1.0 - t) * x0 + t * base + gamma * jnp.sqrt(jnp.clip(t * (1.0 - t), 0.0)) * eps


def train_inputs(task, x0: jax.Array, cond, eps: jax.Array, t: jax.Array, *, schedule,
                 prediction: str) -> TrainInputs:
    """The model inputs, target, offset and weight of ``task``'s objective for a batch.

    Args:
      task: a :class:`~mtlgen_jax.tasks.Task`.
      x0: clean images [B, H, W, C] in [-1, 1].
      cond: the task's condition of those images.
      eps: standard normal noise, same shape as x0.
      t: times [B] in (0, 1].
      schedule, prediction: the diffusion schedule and what plain diffusion predicts.
    """
    zeros = jnp.zeros_like(x0)
    ones = jnp.ones(x0.shape[:1], jnp.float32)
    base = task.start(cond) if task.uses_start else None
    weight = ones
    if task.loss == "relative":  # per-example weight 1 / (the start's squared error)
        start_error = diffusion.loss(base, x0, task.loss_mask(cond), kind="l2")
        weight = 1.0 / (jax.lax.stop_gradient(start_error) + relative_eps(task))
    if task.objective == "regression":
        return TrainInputs(x_t=zeros, t=ones, target=x0,
                           offset=zeros if base is None else base, weight=weight)
    if task.objective == "bridge":
        x_t = bridge_marginal(x0, base, eps, t, task.bridge_noise)
        return TrainInputs(x_t=x_t, t=t, target=x0, offset=x_t, weight=weight)
    x_t = diffusion.q_sample(x0, eps, t, schedule)
    if base is None:
        return TrainInputs(x_t=x_t, t=t, target=diffusion.target(x0, eps, t, schedule, prediction),
                           offset=zeros, weight=ones)
    sigma = jnp.sqrt(jnp.maximum(schedule.one_minus_alpha_bar(t), 0.0))
    return TrainInputs(x_t=x_t, t=t, target=x0, offset=base,
                       weight=weight / jnp.square(jnp.maximum(sigma, RESIDUAL_SIGMA_FLOOR)))


def bridge_sample(x0_fn, base: jax.Array, rng: jax.Array, *, steps: int, gamma: float,
                  post_fn=None) -> jax.Array:
    """Walks the bridge from ``x_1 = base`` to ``t = 0`` in ``steps`` equal steps.

    Args:
      x0_fn: ``(x_t [B,H,W,C], t [B]) -> x0_hat``.
      base: the task's baseline b [B, H, W, C] (the start).
      rng: key of the posterior noise (unused when gamma = 0).
      steps: model calls (static).
      gamma: the bridge's noise scale (the task's ``bridge_noise``).
      post_fn: optional hook on each x0_hat (e.g. clip, paste known pixels).

    Returns:
      The last step's x0_hat (the step to t = 0).
    """
    b = base.shape[0]

    def body(i, carry):
        x_t, _ = carry
        t = (steps - i).astype(jnp.float32) / steps
        s = (steps - i - 1).astype(jnp.float32) / steps
        x0_hat = x0_fn(x_t, jnp.full((b,), t, jnp.float32))
        if post_fn is not None:
            x0_hat = post_fn(x0_hat)
        mean = (1.0 - s) * x0_hat + s * base + (s / t) * (x_t - (1.0 - t) * x0_hat - t * base)
        std = gamma * jnp.sqrt(jnp.maximum(s * (t - s) / t, 0.0))
        z = diffusion.batch_normal(jax.random.fold_in(rng, i), base.shape)
        return mean + std * z, x0_hat

    _, x0_hat = jax.lax.fori_loop(0, steps, body, (base.astype(jnp.float32),
                                                   jnp.zeros(base.shape, jnp.float32)))
    return x0_hat


def sample(task, head_fn, cond, rng: jax.Array, *, schedule, prediction: str, steps: int,
           sampler: str = "ddim", eta: float = 0.0) -> jax.Array:
    """``task``'s output for a batch of conditions, by its objective's sampler.

    Args:
      task: a :class:`~mtlgen_jax.tasks.Task`.
      head_fn: ``(x_t [B,H,W,C], t [B]) -> h``, the model's output for the task (with
        classifier-free guidance already combined in, where it applies).
      cond: the condition [B, ...].
      rng: sampling key.
      schedule, prediction: the diffusion schedule and what plain diffusion predicts.
      steps: model calls; sampler: 'ddim' or 'ddpm' (diffusion); eta: DDIM noise.

    Returns:
      float32 [B, H, W, C] in [-1, 1], through the task's ``postprocess``.
    """
    def finish(x0):
        return task.postprocess(jnp.clip(x0, -1.0, 1.0), cond)

    shape = cond.image.shape
    base = task.start(cond) if task.uses_start else None
    if task.objective == "regression":
        out = head_fn(jnp.zeros(shape, jnp.float32), jnp.ones(shape[:1], jnp.float32))
        return finish(out if base is None else base + out)
    if task.objective == "bridge":
        return bridge_sample(lambda x_t, t: x_t + head_fn(x_t, t), base, rng, steps=steps,
                             gamma=task.bridge_noise, post_fn=finish)
    if base is not None:  # residual diffusion: the head predicts x0 - b
        model_fn, prediction = (lambda x_t, t: base + head_fn(x_t, t)), "x0"
    else:
        model_fn = head_fn
    common = dict(schedule=schedule, prediction=prediction, steps=steps,
                  x0_fn=lambda x0: task.postprocess(x0, cond))
    if sampler == "ddim":
        return diffusion.ddim_sample(model_fn, shape, rng, eta=eta, **common)
    return diffusion.ddpm_sample(model_fn, shape, rng, **common)
