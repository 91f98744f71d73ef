"""Evaluation: per-task metrics on the test split, sample grids, the metrics table.

Each task says how it is scored (``Task.metrics``, ``Task.score``,
``Task.score_samples``): restoration tasks report PSNR and SSIM of the output
against the clean image beside the same metric for the task's trivial baseline
(the noisy input; bicubic upsampling; the mean-filled hole; the gray image);
inpainting's PSNR counts the hole only; class-conditional generation on digits is
scored by a classifier fitted on the real training digits. Ill-posed tasks also
report ``diversity``: the per-pixel std over several samples of one condition.
Batches run sharded over every device (``Parallel.shard_rows``, padded to the
device count when they do not divide it).
"""

from __future__ import annotations

import functools
import os
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from mtlgen_jax import data, metrics, parallel, sampling
from mtlgen_jax.images import to_float, to_uint8
from mtlgen_jax.step import per_example

DIVERSITY_CONDITIONS = 4  # conditions per ill-posed task whose samples are compared
DIVERSITY_SAMPLES = 3
MEDIAN_METRICS = ("sharpness",)  # a ratio per image: its median over images
# The evaluation draws of a task (its test conditions: noise levels, holes; its sampler's
# noise) come from a key of the TASK, not of its position in the run's task list, so a
# task is scored on the same conditions in every run that has it: a specialist and a
# multi-task model (the Δm table), runs with other task lists. The built-in tasks keep
# the keys their positions in configs/default.py gave them (its published numbers stay
# reproducible); any other task is keyed by a hash of its name (``task_key``).
TASK_KEYS = {"denoise": 0, "inpaint": 1, "super_resolve": 2, "colorize": 3, "generate": 4}


def task_key(name: str) -> int:
    """The integer that ``evaluate`` folds into its key for task ``name`` (see TASK_KEYS)."""
    if name in TASK_KEYS:
        return TASK_KEYS[name]
    return len(TASK_KEYS) + zlib.crc32(name.encode()) % (2**31 - len(TASK_KEYS))


def per_row(fn, images: jax.Array, rng: jax.Array):
    """``fn(images, rng)`` (a task's ``degrade`` or ``degrade_info``) with row ``b`` keyed by
    ``fold_in(rng, b)``: a row's condition does not depend on the rest of its batch, so
    padding a batch to the device count changes no real row."""
    keys = jax.vmap(lambda b: jax.random.fold_in(rng, b))(jnp.arange(images.shape[0]))
    return per_example(fn, keys, images)


def evaluate(comp, sampler, params, config, *, num_batches: int,
             par: parallel.Parallel | None = None, grid_dir: str | None = None,
             step: int = 0, steps: int | None = None) -> dict[str, float]:
    """Evaluates every task on ``num_batches`` test batches; writes PNG grids.

    Args:
      comp: the run's Components.
      sampler: a :class:`~mtlgen_jax.sampling.Sampler`.
      params: (EMA) parameters, replicated over ``par``'s mesh (or on one device).
      config: the run's config (uses ``eval.*``, ``diffusion.*`` and ``dataset``).
      num_batches: test batches per task.
      par: the devices to shard the batches over (default: all of them).
      grid_dir: if set, writes ``<grid_dir>/samples/<task>_step<step>.png``.
      step: the training step (names the PNG files).
      steps: sampler steps for every task (default: each task's own ``sample_steps``,
        else ``eval.sample_steps``; see ``sampling.settings_for``).

    Returns:
      ``{'eval/<task>/<metric>': value}``.
    """
    par = par or parallel.Parallel()
    ev = config.eval
    batch = ev.batch_size // jax.process_count()
    it = data.create_iterator(config.dataset, config.dataset.test_split, batch_size=batch,
                              seed=config.seed, shuffle=False, repeat=True)
    batches = [next(it) for _ in range(num_batches)]
    rng = jax.random.key(config.seed + 1)
    results: dict[str, float] = {}
    for task in comp.tasks:
        k_rng = jax.random.fold_in(rng, task_key(task.name))
        degrade = jax.jit(functools.partial(per_row, task.degrade))
        degrade_info = jax.jit(functools.partial(per_row, task.degrade_info))  # once per task
        task_kw = sampling.settings_for(task, config, steps=steps)
        scores: dict[str, list] = {}
        outputs, labels_seen, grid = [], [], None
        for i, host_batch in enumerate(batches):
            b_rng = jax.random.fold_in(k_rng, i)
            dev, rows = par.shard_rows(host_batch)
            x0 = to_float(dev["image"])
            cond = degrade(x0, jax.random.fold_in(b_rng, 0))
            labels = (jnp.arange(x0.shape[0]) % comp.info.num_classes if comp.info.num_classes
                      else jnp.zeros((x0.shape[0],), jnp.int32))
            out = sampler(params, task.name, cond, labels, jax.random.fold_in(b_rng, 1),
                          **task_kw)
            for name, value in par.gather(task.score(out, x0, cond), rows).items():
                scores.setdefault(name, []).append(value)
            info = degrade_info(x0, jax.random.fold_in(b_rng, 0))
            for name, value in _classical_scores(task, par, x0, cond, info, rows).items():
                scores.setdefault(name, []).append(value)
            outputs.append(par.gather(to_uint8(out), rows))
            labels_seen.append(par.gather(labels, rows))
            if i == 0:
                grid = par.gather((cond.image, out, x0), rows)
                if task.ill_posed and task.stochastic:
                    results[f"eval/{task.name}/diversity"] = _diversity(
                        sampler, par, params, task, par.gather((cond, labels), rows), b_rng,
                        **task_kw)
        for name, values in scores.items():
            aggregate = np.median if name.split("_")[0] in MEDIAN_METRICS else np.mean
            results[f"eval/{task.name}/{name}"] = float(aggregate(np.concatenate(values)))
        sample_scores = task.score_samples(np.concatenate(outputs), np.concatenate(labels_seen),
                                           config.dataset)
        results.update({f"eval/{task.name}/{k}": v for k, v in sample_scores.items()})
        if grid_dir is not None and grid is not None:
            save_grid(os.path.join(grid_dir, "samples", f"{task.name}_step{step}.png"),
                      *grid, show_condition=task.has_condition)
    return results


def _classical_scores(task, par, x0, cond, info, rows) -> dict[str, np.ndarray]:
    """``<metric>_classical``: the task's classical method (on the host, given the
    degradation's parameters ``info``), scored as the model's outputs are; {} where the
    task has none."""
    host_cond, host_x0, host_info = par.gather((cond, x0, info), rows)
    out = task.classical(host_cond, host_info)
    if out is None:
        return {}
    scores = task.score(jnp.asarray(out), jnp.asarray(host_x0),
                        jax.tree.map(jnp.asarray, host_cond))
    return {f"{k}_classical": np.asarray(v) for k, v in scores.items()
            if not k.endswith("_baseline")}


def _diversity(sample_fn, par, params, task, cond_labels, rng, **kw) -> float:
    """Mean per-pixel std over DIVERSITY_SAMPLES samples of the first few conditions.

    The first DIVERSITY_CONDITIONS conditions (host arrays) are repeated
    DIVERSITY_SAMPLES times and sampled as one batch (one small compilation).
    """
    cond, labels = cond_labels
    n, s = min(DIVERSITY_CONDITIONS, labels.shape[0]), DIVERSITY_SAMPLES
    rep = jax.tree.map(lambda x: np.tile(x[:n], (s,) + (1,) * (x.ndim - 1)), (cond, labels))
    (rep_cond, rep_labels), rows = par.shard_rows(rep)
    out = par.gather(sample_fn(params, task.name, rep_cond, rep_labels,
                               jax.random.fold_in(rng, 100), **kw), rows)  # [s * n, H, W, C]
    out = out.reshape((s, n) + out.shape[1:]).swapaxes(0, 1)  # [n, s, H, W, C]
    return float(np.mean(metrics.diversity(out)))


def save_grid(path: str, cond: np.ndarray, out: np.ndarray, target: np.ndarray, *,
              show_condition: bool = True, max_rows: int = 8) -> np.ndarray:
    """Writes a PNG with one row per example: condition | output | target.

    For generation (``show_condition=False``) the outputs are tiled instead.
    Inputs are float [-1, 1] [N, H, W, C]. Returns the uint8 grid.
    """
    out8 = np.asarray(to_uint8(out))
    if show_condition:
        rows = [np.concatenate([np.asarray(to_uint8(c)), o, np.asarray(to_uint8(t))], axis=1)
                for c, o, t in zip(cond[:max_rows], out8[:max_rows], target[:max_rows])]
        grid = np.concatenate(rows, axis=0)
    else:
        n = min(len(out8), max_rows * max_rows)
        cols = min(n, max_rows)
        nrows = n // cols
        tiles = out8[: nrows * cols].reshape(nrows, cols, *out8.shape[1:])
        grid = np.concatenate(np.concatenate(tiles, axis=2), axis=0)
    if grid.shape[-1] == 1:
        grid = grid[..., 0]
    scale = max(1, 256 // max(grid.shape[:2]))
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale),
                                       Image.NEAREST)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path)
    return grid


def format_table(results: dict[str, float]) -> str:
    """A fixed-width table of eval metrics, one task a row, baselines beside."""
    by_task: dict[str, dict[str, float]] = {}
    for key, value in results.items():
        _, task, metric = key.split("/", 2)
        by_task.setdefault(task, {})[metric] = value
    cols = sorted({m for d in by_task.values() for m in d})
    head = f"{'task':<14}" + "".join(f"{c:>16}" for c in cols)
    lines = [head, "-" * len(head)]
    for task, d in by_task.items():
        lines.append(f"{task:<14}" + "".join(
            f"{d[c]:>16.4f}" if c in d else f"{'':>16}" for c in cols))
    return "\n".join(lines)
