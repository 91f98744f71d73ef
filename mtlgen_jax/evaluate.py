"""Evaluation: per-task metrics on the test split, sample grids, the metrics table.

Restoration tasks (denoise, inpaint, super_resolve, colorize): PSNR and SSIM of
the output against the clean image, beside the same metric for the task's
trivial baseline (the noisy input; bicubic upsampling; the mean-filled hole;
the gray image). Inpainting's PSNR counts the hole only. Ill-posed tasks also
report ``diversity``: the per-pixel std over several samples of one condition.
Class-conditional generation on ``digits``: accuracy of a classifier fitted on
the real training digits on the generated samples (beside its accuracy on the
real test digits) and a Fréchet distance to the real test digits in the
classifier's standardized 8x8 pixel space (``metrics.DigitsJudge``).
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from PIL import Image

from mtlgen_jax import data, metrics
from mtlgen_jax.step import to_float, to_uint8

DIVERSITY_CONDITIONS = 4  # conditions per ill-posed task whose samples are compared
DIVERSITY_SAMPLES = 3


def masked_psnr(a: jax.Array, b: jax.Array, mask: jax.Array | None) -> jax.Array:
    """[B] PSNR of images in [-1, 1], over the pixels where ``mask`` ([B, H, W, 1]) is 1."""
    if mask is None:
        return metrics.psnr(a, b, data_range=2.0)
    err = jnp.square(a - b) * mask
    mse = err.sum(axis=(1, 2, 3)) / jnp.maximum(mask.sum(axis=(1, 2, 3)) * a.shape[-1], 1.0)
    return 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))


def _to_host(x) -> np.ndarray:
    """A (possibly multi-process) global array -> numpy on every process."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))


@functools.lru_cache(maxsize=4)
def _digits_judge(dataset_key: tuple):
    """A DigitsJudge fitted on the real training digits at the run's resolution."""
    import ml_collections

    ds_cfg = ml_collections.ConfigDict(dict(dataset_key))
    info = data.get_info(ds_cfg)
    it = data.create_iterator(ds_cfg, ds_cfg.train_split, batch_size=info.num_train, seed=0,
                              shuffle=False, repeat=False, process_index=0, process_count=1)
    train = next(it)
    judge = metrics.fit_digits_judge(train["image"], train["label"])
    it = data.create_iterator(ds_cfg, ds_cfg.test_split, batch_size=info.num_test, seed=0,
                              shuffle=False, repeat=False, process_index=0, process_count=1)
    test = next(it)
    return judge, test["image"], test["label"]


def evaluate(comp, sampler, params, config, *, num_batches: int, grid_dir: str | None = None,
             step: int = 0, shard=None) -> dict[str, float]:
    """Evaluates every task on ``num_batches`` test batches; writes PNG grids.

    Args:
      comp: the run's Components.
      sampler: a :class:`~mtlgen_jax.sampling.Sampler`.
      params: (EMA) parameters.
      config: the run's config (uses ``eval.*`` and ``diffusion.*``).
      num_batches: test batches per task.
      grid_dir: if set, writes ``<grid_dir>/samples/<task>_step<step>.png``.
      step: the training step (names the PNG files).
      shard: optional function placing a host batch dict on devices.

    Returns:
      ``{'eval/<task>/<metric>': value}``.
    """
    ev = config.eval
    batch = ev.batch_size // jax.process_count()
    it = data.create_iterator(config.dataset, config.dataset.test_split, batch_size=batch,
                              seed=config.seed, shuffle=False, repeat=True)
    batches = [next(it) for _ in range(num_batches)]
    shard = shard or (lambda b: jax.tree.map(jnp.asarray, b))
    rng = jax.random.key(config.seed + 1)
    kw = dict(steps=ev.sample_steps, sampler=config.diffusion.sampler, eta=config.diffusion.eta)
    results: dict[str, float] = {}
    for k, task in enumerate(comp.tasks):
        k_rng = jax.random.fold_in(rng, k)
        degrade = jax.jit(task.degrade)
        scores: dict[str, list] = {}
        grid = None
        for i, host_batch in enumerate(batches):
            b_rng = jax.random.fold_in(k_rng, i)
            dev = shard(host_batch)
            x0 = to_float(dev["image"])
            cond = degrade(x0, jax.random.fold_in(b_rng, 0))
            labels = (jnp.arange(x0.shape[0]) % comp.info.num_classes if comp.info.num_classes
                      else jnp.zeros((x0.shape[0],), jnp.int32))
            gen_kw = dict(kw, guidance=ev.guidance) if task.name == "generate" else kw
            out = sampler(params, task.name, cond, labels, jax.random.fold_in(b_rng, 1), **gen_kw)
            if task.name == "generate":
                scores.setdefault("images", []).append(_to_host(to_uint8(out)))
                scores.setdefault("labels", []).append(_to_host(labels))
            else:
                mask = task.loss_mask(cond)
                base = task.baseline(cond)
                scores.setdefault("psnr", []).append(_to_host(masked_psnr(out, x0, mask)))
                scores.setdefault("ssim", []).append(_to_host(metrics.ssim(out, x0)))
                if base is not None:
                    scores.setdefault("psnr_baseline", []).append(
                        _to_host(masked_psnr(base, x0, mask)))
                    scores.setdefault("ssim_baseline", []).append(_to_host(metrics.ssim(base, x0)))
            if i == 0:
                grid = (_to_host(cond.image), _to_host(out), _to_host(x0))
                if task.ill_posed and task.objective == "diffusion":
                    results[f"eval/{task.name}/diversity"] = _diversity(
                        sampler, params, task, cond, labels, b_rng, **gen_kw)
        for name, values in scores.items():
            if name not in ("images", "labels"):
                results[f"eval/{task.name}/{name}"] = float(np.mean(np.concatenate(values)))
        if task.name == "generate":
            results.update(_generation_scores(config, np.concatenate(scores["images"]),
                                              np.concatenate(scores["labels"])))
        if grid_dir is not None and grid is not None:
            save_grid(os.path.join(grid_dir, "samples", f"{task.name}_step{step}.png"),
                      *grid, show_condition=task.name != "generate")
    return results


def _diversity(sample_fn, params, task, cond, labels, rng, **kw) -> float:
    """Mean per-pixel std over DIVERSITY_SAMPLES samples of the first few conditions.

    The first DIVERSITY_CONDITIONS conditions are repeated DIVERSITY_SAMPLES
    times and sampled as one batch (one small compilation, little compute).
    """
    n, s = min(DIVERSITY_CONDITIONS, cond.image.shape[0]), DIVERSITY_SAMPLES
    rep = jax.tree.map(lambda x: jnp.tile(jnp.asarray(_to_host(x)[:n]),
                                          (s,) + (1,) * (x.ndim - 1)), (cond, labels))
    out = _to_host(sample_fn(params, task.name, rep[0], rep[1], jax.random.fold_in(rng, 100),
                             **kw))  # [s * n, H, W, C]
    out = out.reshape((s, n) + out.shape[1:]).swapaxes(0, 1)  # [n, s, H, W, C]
    return float(np.mean(metrics.diversity(out)))


def _generation_scores(config, images: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Judge-based scores of generated digits (other datasets: none)."""
    if config.dataset.name != "digits" or images.shape[-1] != 1:
        return {}
    key = tuple(sorted((k, v) for k, v in config.dataset.to_dict().items()
                       if not isinstance(v, dict | list)))
    judge, test_images, test_labels = _digits_judge(key)
    return {
        "eval/generate/accuracy": judge.accuracy(images, labels),
        "eval/generate/accuracy_real": judge.accuracy(test_images, test_labels),
        "eval/generate/frechet": judge.frechet_distance(images, test_images),
    }


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
