"""Sampling a task's outputs with a trained model, by its objective (``objectives.sample``):
DDIM / DDPM, one regression pass, or the bridge from the task's baseline.

A :class:`Sampler` caches one compiled function per (task, sampler, steps,
guidance), each a ``lax`` loop over the diffusion steps inside one jit. It runs
on whatever its inputs are placed on: callers shard the batch over their devices
with ``parallel.Parallel.shard_rows`` and read it back with ``Parallel.gather``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mtlgen_jax import diffusion, ensemble, objectives
from mtlgen_jax.tasks import Condition

SAMPLERS = ("ddim", "ddpm")


class Sampler:
    """Draws outputs of each task from ``params``.

    Args:
      comp: the run's :class:`~mtlgen_jax.components.Components`.
    """

    def __init__(self, comp):
        self.comp = comp
        self._cache = {}

    def __call__(self, params, task: str, cond: Condition, labels: jax.Array, rng: jax.Array, *,
                 steps: int = 50, sampler: str = "ddim", eta: float = 0.0,
                 guidance: float = 1.0, self_ensemble: bool = False) -> jax.Array:
        """Returns float32 [B, H, W, C] in [-1, 1].

        ``self_ensemble``: the mean of the outputs for the 8 flips and rotations of each
        condition (``mtlgen_jax.ensemble``; one call on an 8x batch), for tasks with a
        condition image.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} is unknown; use one of {SAMPLERS}.")
        if steps < 1:
            raise ValueError(f"steps={steps} must be >= 1.")
        k = self.comp.task_index(task)
        check_self_ensemble(self.comp.tasks[k], self_ensemble)
        key = (k, sampler, int(steps), float(eta), float(guidance), bool(self_ensemble))
        if key not in self._cache:
            self._cache[key] = jax.jit(functools.partial(
                self._sample, k, sampler=sampler, steps=int(steps), eta=float(eta),
                guidance=float(guidance), self_ensemble=bool(self_ensemble)))
        return self._cache[key](params, cond, labels, rng)

    def _sample(self, k, params, cond, labels, rng, *, sampler, steps, eta, guidance,
                self_ensemble=False):
        if self_ensemble:
            labels = jnp.tile(labels, ensemble.SIZE)
            return ensemble.batched(
                lambda c: self._sample(k, params, c, labels, rng, sampler=sampler,
                                       steps=steps, eta=eta, guidance=guidance), cond)
        task = self.comp.tasks[k]
        b = cond.image.shape[0]
        task_id = jnp.full((b,), k, jnp.int32)
        cond_labels = task.model_labels(labels, rng, train=False)
        null = jnp.full((b,), self.comp.info.num_classes or 0, jnp.int32)

        def apply(x_t, t, lab):
            return self.comp.model.apply({"params": params}, x_t, cond, t, task_id, lab)

        def head_fn(x_t, t):
            pred = apply(x_t, t, cond_labels)
            if guidance != 1.0 and task.class_conditional:
                pred = diffusion.guided(pred, apply(x_t, t, null), guidance)
            return pred

        return objectives.sample(task, head_fn, cond, rng, schedule=self.comp.schedule,
                                 prediction=self.comp.prediction, steps=steps, sampler=sampler,
                                 eta=eta)


def settings_for(task, config, *, steps: int | None = None, sampler: str | None = None,
                 eta: float | None = None, guidance: float | None = None,
                 self_ensemble: bool | None = None) -> dict:
    """The keyword arguments ``task`` is sampled with (for :class:`Sampler`): each value
    given, else the run's evaluation settings -- what its metrics were measured at.

    steps: the task's own ``sample_steps`` where its config sets one (e.g. a task whose
    fidelity operating point is its 1-step estimate while the others gain from more
    steps), else ``eval.sample_steps``; sampler / eta: ``diffusion.sampler`` / ``eta``;
    guidance: ``eval.guidance`` for class-conditional generation, else 1 (none);
    self_ensemble: ``eval.self_ensemble`` for tasks with a condition image.
    """
    if steps is None:
        steps = task.sample_steps or config.eval.sample_steps
    if int(steps) < 1:
        raise ValueError(f"steps={steps} must be >= 1.")
    if guidance is None:
        guidance = config.eval.get("guidance", 1.0) if task.class_conditional else 1.0
    return dict(steps=int(steps),
                sampler=config.diffusion.sampler if sampler is None else sampler,
                eta=float(config.diffusion.eta if eta is None else eta),
                guidance=float(guidance),
                self_ensemble=self_ensemble_for(task, config.eval, self_ensemble))


def self_ensemble_for(task, eval_config, requested: bool | None = None) -> bool:
    """Whether ``task``'s outputs are self-ensembled: ``requested`` (checked), else the
    config's ``eval.self_ensemble`` for a task with a condition image."""
    if requested is None:
        return task.has_condition and bool(eval_config.get("self_ensemble", False))
    check_self_ensemble(task, requested)
    return bool(requested)


def check_self_ensemble(task, self_ensemble: bool) -> None:
    """Refuses a self-ensemble of a task without a condition image, naming the fix."""
    if self_ensemble and not task.has_condition:
        raise ValueError(f"self_ensemble averages the restorations of one condition under 8 "
                         f"flips and rotations; task {task.name!r} has no condition image: "
                         "pass self_ensemble=False (eval.self_ensemble applies to the "
                         "restoration tasks only).")
