"""``launch.py --mode eval|sample|restore``: the library calls behind them.

Each takes ``overrides`` ({dotted config key: value} from ``--config.KEY=VALUE``),
applied on top of the workdir's config where they may change after training
(``workdir.INFERENCE_KEYS``: the dataset and the evaluation / sampling settings);
any other key is refused with its name. Nothing is silently ignored.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from mtlgen_jax import api, evaluate
from mtlgen_jax import workdir as workdir_lib
from mtlgen_jax.images import to_float


def _restore(workdir: str, step: int | None, overrides: dict | None, mode: str) -> api.Run:
    if overrides:
        workdir_lib.apply_inference_overrides(workdir_lib.load_config(workdir), overrides,
                                              mode=mode)  # refuses bad keys, naming them
        logging.info("--mode %s: %s applied on top of %s/config.json", mode,
                     ", ".join(f"{k}={v!r}" for k, v in overrides.items()), workdir)
    return api.restore(workdir, step=step, overrides=overrides)


def eval_workdir(workdir: str, *, step: int | None = None,
                 overrides: dict | None = None) -> dict[str, float]:
    """Evaluates a workdir's checkpoint; prints the table and appends to metrics.jsonl."""
    run = _restore(workdir, step, overrides, "eval")
    results = run.evaluate(num_batches=run.config.eval.num_batches)
    print(evaluate.format_table(results))
    if jax.process_index() == 0:
        from mtlgen_jax.writers import MetricWriter

        writer = MetricWriter(workdir)
        writer.write(run.step, results)
        writer.close()
    return results


def sample_workdir(workdir: str, *, step: int | None = None, num: int = 16,
                   steps: int | None = None, overrides: dict | None = None) -> list[str]:
    """Writes ``samples/<task>_sample_step<N>.png`` grids for every task of a workdir
    (``steps`` sampler steps; default: the run's, ``sampling.settings_for``)."""
    from mtlgen_jax import data

    run = _restore(workdir, step, overrides, "sample")
    it = data.create_iterator(run.config.dataset, run.config.dataset.test_split,
                              batch_size=num, seed=run.config.seed, shuffle=False, repeat=True,
                              process_index=0, process_count=1)
    batch = next(it)
    paths = []
    for i, t in enumerate(run.comp.tasks):
        rng = jax.random.key(i)
        if t.has_condition:
            condition = run.degrade(t.name, batch["image"], rng)
            out = run.sample(t.name, condition=condition, rng=rng, steps=steps)
            cond = np.asarray(condition.image)
        else:
            nc = run.info.num_classes
            kw = {"labels": np.arange(num) % nc} if t.class_conditional else {"num_samples": num}
            out = run.sample(t.name, rng=rng, steps=steps, **kw)
            cond = np.zeros_like(to_float(batch["image"]))
        path = os.path.join(workdir, "samples", f"{t.name}_sample_step{run.step}.png")
        evaluate.save_grid(path, cond, to_float(out), to_float(batch["image"]),
                           show_condition=t.has_condition)
        logging.info("wrote %s", path)
        paths.append(path)
    return paths


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str, *, what: str = "--input") -> np.ndarray:
    """A photo file -> uint8 [H, W] (gray) or [H, W, 3]; clear errors naming the file."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}={path}: no such file.")
    try:
        with Image.open(path) as img:
            img.load()
            gray = img.mode in ("1", "L", "LA", "I", "I;16", "F")
            return np.asarray(img.convert("L" if gray else "RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{what}={path} cannot be read as an image ({e}); pass a PNG, JPEG, "
                         "BMP or TIFF file.") from e


def check_output(path: str) -> None:
    """Refuses an output path that cannot be written, before any work."""
    if not path.lower().endswith(IMAGE_SUFFIXES):
        raise ValueError(f"--output={path}: name an image file ({', '.join(IMAGE_SUFFIXES)}).")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ValueError(f"--output={path}: the folder {folder} does not exist or is not "
                         "writable; create it or choose another path.")


def restore_file(workdir: str, *, task: str, input_path: str, output_path: str,
                 mask_path: str | None = None, steps: int | None = None,
                 step: int | None = None, overrides: dict | None = None) -> np.ndarray:
    """``--mode restore``: restores one photo file with a trained run, writes the result.

    The output is the input's size (``factor`` times larger for super_resolve, whose
    input is the low-resolution photo); inpainting keeps every pixel outside the mask
    (white = missing) exactly.
    """
    from PIL import Image

    check_output(output_path)
    image = read_image(input_path)
    mask = read_image(mask_path, what="--mask") if mask_path else None
    if mask is not None and mask.shape[:2] != image.shape[:2]:
        raise ValueError(f"--mask={mask_path} is {mask.shape[1]}x{mask.shape[0]} but "
                         f"--input={input_path} is {image.shape[1]}x{image.shape[0]} "
                         "(width x height): they must match.")
    run = _restore(workdir, step, overrides, "restore")
    if task not in run.tasks:
        raise ValueError(f"--task={task} is not one this run was trained on: "
                         f"{', '.join(run.tasks)}.")
    size = run.info.image_size
    if min(image.shape[:2]) < size:
        logging.info("%s is smaller than the model's %dx%d crop: reflect-padded, then cropped "
                     "back.", input_path, size, size)
    out = run.restore_image(task, image, mask=mask, steps=steps)  # uint8 mask: > 127 = hole
    Image.fromarray(out[..., 0] if out.shape[-1] == 1 else out).save(output_path)
    logging.info("wrote %s (%dx%d)", output_path, out.shape[1], out.shape[0])
    return out
