"""Tiled vs. untiled restoration of held-out photographs with a trained run, and a seam test.

    python bench/tiling.py --workdir runs/objectives/bridge [--steps 4] [--json PATH]

Crops of 32 x W pixels (``--widths``, default 40 and 96) from the held-out test
photographs (scikit-image's chelsea and coffee, downscaled 4x as the embedded
dataset's coarsest scale is) go through
each task's degradation, then through ``Run.restore_image`` (tiles of the model's
crop size, a quarter-tile overlap, blended at every sampler step) and through the
same sampler with the model applied to the whole crop at once (no tiles: the U-Net
is convolutional). Reported per task: PSNR of each against the clean crop (target:
tiled within 0.2 dB of untiled) and the seam ratio -- the mean absolute step between
neighbouring columns across tile borders over that across the other columns (1 = no
seam; a seam would stand out above 1). The untiled reference is itself off the
training distribution: the model learned 32 x 32 crops, and its attention then sees
every position of a wider image at once. A width of 40 (two tiles) keeps it close to
what the model knows -- the fair reference for the 0.2 dB criterion; 96 (four tiles)
shows the drift on a wider image.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402


def crops(height: int = 32, width: int = 96, per_photo: int = 4) -> np.ndarray:
    """uint8 [N, height, width, 3] crops of the held-out photos at 1/4 scale."""
    from PIL import Image
    from skimage import data as skdata

    out = []
    for photo in (skdata.chelsea(), skdata.coffee()):
        img = Image.fromarray(photo)
        small = np.asarray(img.resize((img.width // 4, img.height // 4), Image.BICUBIC))
        ys = np.linspace(0, small.shape[0] - height, per_photo).astype(int)
        xs = np.linspace(0, small.shape[1] - width, per_photo).astype(int)
        out += [small[y:y + height, x:x + width] for y, x in zip(ys, xs)]
    return np.stack(out)


def seam_ratio(images: np.ndarray, borders: list[int]) -> float:
    steps = np.abs(np.diff(images.astype(np.float64), axis=2)).mean(axis=(0, 1, 3))
    inner = [x for x in range(len(steps)) if x not in borders]
    return float(steps[borders].mean() / steps[inner].mean())


def untiled_sample(run, k: int, cond, rng, steps: int):
    """The task's sampler with the model applied to the whole image (no tiles)."""
    from mtlgen_jax import objectives

    task = run.comp.tasks[k]
    labels = task.model_labels(jnp.zeros((1,), jnp.int32), rng, train=False)

    def head_fn(x_t, t):
        return run.comp.model.apply({"params": run.params}, x_t, cond, t,
                                    jnp.full((1,), k, jnp.int32), labels)

    return jax.jit(lambda r: objectives.sample(
        task, head_fn, cond, r, schedule=run.comp.schedule, prediction=run.comp.prediction,
        steps=steps, sampler=run.config.diffusion.sampler, eta=run.config.diffusion.eta))(rng)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--widths", default="40,96", help="crop widths (height: the tile size)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    result = {"steps": args.steps, "workdir": args.workdir, "widths": {}}
    for width in (int(w) for w in args.widths.split(",")):
        result["widths"][str(width)] = measure(args, width)
    common.write_json(args.json, result)
    return result


def measure(args, width: int) -> dict:

    import mtlgen_jax as mg
    from mtlgen_jax import tiling
    from mtlgen_jax.images import to_float, to_uint8
    from mtlgen_jax.tasks.super_resolve import downsample

    run = mg.restore(args.workdir)
    size = run.info.image_size
    clean = crops(size, width)
    overlap = size // 4
    borders = [x - 1 for x in tiling.tile_starts(clean.shape[2], size, size - overlap)[1:]]
    result, rows = {"tasks": {}}, []
    for task_name in run.tasks:
        task = run.comp.tasks[run.comp.task_index(task_name)]
        k = run.comp.task_index(task_name)
        key = jax.random.key(0)
        x = to_float(jnp.asarray(clean))
        if task_name == "inpaint":  # the training masks are drawn for square crops
            hole = np.zeros(x.shape[:3] + (1,), np.float32)
            hole[:, size // 4:3 * size // 4, width // 5:width - width // 5] = 1.0  # across borders
            full = task.condition(x, jnp.asarray(hole))
        else:
            full = task.degrade(x, key)
        tiled, untiled = [], []
        for i in range(len(clean)):
            mask = None
            if task_name == "super_resolve":
                user = np.asarray(to_uint8(downsample(x[i:i + 1], task.factor)))[0]
            elif task_name == "inpaint":
                mask = np.asarray(full.mask[i, ..., 0]) < 0.5
                user = clean[i]
            else:
                user = np.asarray(to_uint8(full.image[i]))
            tiled.append(run.restore_image(task_name, user, mask=mask, steps=args.steps,
                                           rng=jax.random.key(i)))
            cond = task.condition(to_float(jnp.asarray(user))[None],
                                  None if mask is None else jnp.asarray(mask)[None, ..., None])

            out = untiled_sample(run, k, cond, jax.random.key(i), args.steps)
            untiled.append(np.asarray(to_uint8(out))[0])
        tiled, untiled = np.stack(tiled), np.stack(untiled)
        mask = task.loss_mask(full)
        psnr_t = float(np.mean(mg.metrics.masked_psnr(to_float(jnp.asarray(tiled)), x, mask)))
        psnr_u = float(np.mean(mg.metrics.masked_psnr(to_float(jnp.asarray(untiled)), x, mask)))
        r = {"psnr_tiled": psnr_t, "psnr_untiled": psnr_u, "delta_db": psnr_t - psnr_u,
             "seam_ratio_tiled": seam_ratio(tiled, borders),
             "seam_ratio_untiled": seam_ratio(untiled, borders)}
        result["tasks"][task_name] = r
        rows.append([task_name, psnr_t, psnr_u, psnr_t - psnr_u, r["seam_ratio_tiled"],
                     r["seam_ratio_untiled"]])
    common.print_table(rows, ["task", "PSNR tiled", "PSNR untiled", "Δ dB", "seam tiled",
                              "seam untiled"],
                       title=f"{len(clean)} crops {size}x{width}, tiles {size} (overlap "
                             f"{overlap}), {args.steps} steps")
    return result


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
