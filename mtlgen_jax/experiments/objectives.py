r"""The objectives table: each restoration objective at 1, 4 and 25 sampling steps.

    python -m mtlgen_jax.experiments.objectives --config configs/default.py \
        --workdir runs/objectives [--objectives diffusion,diffusion-residual,...] \
        [--steps_list 1,4,25] [--config.KEY=VALUE]

Trains one model per objective on the config's tasks (`<workdir>/<objective>`: every
task of the config with that objective; the rest of the config as it is), with
`mtlgen_jax.train.train_and_evaluate`, then evaluates each with its EMA parameters
at every sampling step count of `--steps_list` where the objective takes steps
(`regression-residual`: one pass) on the same test batches, and writes
`<workdir>/objectives.md` / `.csv` (PSNR, SSIM, sharpness or diversity of each task,
beside its trivial baseline and classical method), `objectives_psnr_vs_steps.png`
and `objectives_samples.png` (the same test crops under each objective).

Objectives (see `mtlgen_jax.objectives`): `diffusion` (Palette, from pure noise),
`diffusion-residual` (the clean-image estimate is baseline + head),
`regression-residual` (one pass, baseline + head), `bridge` (from the baseline;
1 step = the network's estimate).

Resumable: a finished run (checkpoint and final evaluation at the last step) is
reused, an unfinished one resumes, and evaluations already in `<run>/objectives_eval.json`
are not repeated.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence

import ml_collections
from absl import logging

from mtlgen_jax.experiments import delta_m
from mtlgen_jax.objective_params import with_objective

# name -> (objective, residual)
OBJECTIVES = {
    "diffusion": ("diffusion", False),
    "diffusion-residual": ("diffusion", True),
    "regression-residual": ("regression", True),
    "bridge": ("bridge", False),
}
DEFAULT_STEPS = (1, 4, 25)
EVAL_FILE = "objectives_eval.json"


def objective_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """`config` with every task on objective `name`."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective {name!r} is unknown; use one of {', '.join(OBJECTIVES)}")
    objective, residual = OBJECTIVES[name]
    cfg = config.copy_and_resolve_references()
    cfg.unlock()
    for task in delta_m.task_names(cfg):
        params = dict(cfg.tasks.get(task, {}) or {})
        if params.get("loss") == "relative" and not (residual or objective == "bridge"):
            params["loss"] = "l2"  # plain diffusion has no start to be relative to
        cfg.tasks[task] = with_objective(params, objective, residual=residual)
    return cfg


def steps_for(name: str, steps_list: Sequence[int]) -> list[int]:
    """The step counts an objective is evaluated at (regression: one pass)."""
    return [1] if OBJECTIVES[name][0] == "regression" else list(steps_list)


def evaluate_run(workdir: str, steps_list: Sequence[int], name: str) -> dict[str, dict]:
    """{str(steps): eval results} of a trained run, cached in `<workdir>/EVAL_FILE`."""
    from mtlgen_jax import api

    path = os.path.join(workdir, EVAL_FILE)
    cache = json.load(open(path)) if os.path.exists(path) else {}
    run = None
    for steps in steps_for(name, steps_list):
        if str(steps) in cache:
            continue
        run = run or api.restore(workdir)
        logging.info("evaluating %s at %d step(s)", workdir, steps)
        cache[str(steps)] = run.evaluate(num_batches=run.config.eval.num_batches, steps=steps)
        with open(path + ".tmp", "w") as f:
            json.dump(cache, f, indent=1)
        os.replace(path + ".tmp", path)
    return cache


COLUMNS = ("psnr", "ssim", "sharpness", "diversity")


def rows(results: dict[str, dict[str, dict]], tasks: Sequence[str]) -> list[dict]:
    """One row per (task, objective, steps), then each task's baseline and classical rows."""
    out = []
    for task in tasks:
        first = None
        for name, by_steps in results.items():
            for steps, ev in sorted(by_steps.items(), key=lambda kv: int(kv[0])):
                first = first or ev
                out.append({"task": task, "method": name, "steps": int(steps),
                            **{c: ev.get(f"eval/{task}/{c}", math.nan) for c in COLUMNS}})
        for kind in ("baseline", "classical"):
            if first and f"eval/{task}/psnr_{kind}" in first:
                out.append({"task": task, "method": kind, "steps": 0,
                            **{c: first.get(f"eval/{task}/{c}_{kind}", math.nan)
                               for c in COLUMNS}})
    return out


def format_markdown(table: Sequence[dict]) -> str:
    head = ["task", "method", "steps", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 4) + "|"]
    for r in table:
        cells = [r["task"], r["method"], str(r["steps"]) if r["steps"] else "–"]
        cells += ["" if not math.isfinite(r[c]) else f"{r[c]:.3f}" for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_csv(table: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, ["task", "method", "steps", *COLUMNS], lineterminator="\n")
    w.writeheader()
    w.writerows(table)
    return buf.getvalue()


def plot_psnr_vs_steps(table: Sequence[dict], path: str) -> None:
    """PSNR against sampling steps, one panel per task (matplotlib: the `bench` extra)."""
    try:
        import matplotlib
    except ImportError:
        logging.warning("matplotlib is not installed (pip install -e '.[bench]'): %s is not "
                        "drawn; the tables are written.", path)
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in table))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        task_rows = [r for r in table if r["task"] == task]
        for method in dict.fromkeys(r["method"] for r in task_rows):
            pts = sorted((r["steps"], r["psnr"]) for r in task_rows if r["method"] == method)
            if method in ("baseline", "classical"):
                ax.axhline(pts[0][1], ls="--" if method == "baseline" else ":", color="gray",
                           label=method)
            else:
                ax.plot(*zip(*pts), marker="o", label=method)
        ax.set_xscale("log")
        ax.set_xlabel("sampling steps")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(task)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sample_picture(workdirs: dict[str, str], path: str, steps: int, num: int = 6) -> None:
    """Rows: per task, condition | each objective's output | target, on the same crops."""
    import jax
    import numpy as np
    from PIL import Image

    from mtlgen_jax import api, data
    from mtlgen_jax.images import to_uint8

    runs = {name: api.restore(w) for name, w in workdirs.items()}
    first = next(iter(runs.values()))
    it = data.create_iterator(first.config.dataset, first.config.dataset.test_split,
                              batch_size=num, seed=first.config.seed, shuffle=False,
                              process_index=0, process_count=1)
    images = next(it)["image"]
    blocks = []
    for task in first.tasks:
        key = jax.random.key(0)
        cond = first.degrade(task, images, key)
        cols = [np.asarray(to_uint8(cond.image))]
        for name, run in runs.items():
            n = 1 if OBJECTIVES[name][0] == "regression" else steps
            cols.append(run.sample(task, condition=cond, rng=key, steps=n))
        cols.append(images)
        blocks.append(np.concatenate([np.concatenate(list(c), axis=0) for c in cols], axis=1))
    grid = np.concatenate(blocks, axis=1)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def run_experiment(config, workdir: str, names: Sequence[str], steps_list: Sequence[int]):
    from mtlgen_jax.cli import eval_workdir
    from mtlgen_jax.train import train_and_evaluate

    tasks = delta_m.task_names(config)
    results, workdirs = {}, {}
    for name in names:
        cfg = objective_config(config, name)
        sub = os.path.join(workdir, name)
        delta_m.ensure_run(cfg, sub, train_fn=train_and_evaluate, eval_fn=eval_workdir)
        workdirs[name] = sub
    for name, sub in workdirs.items():
        results[name] = evaluate_run(sub, steps_list, name)
    table = rows(results, tasks)
    with open(os.path.join(workdir, "objectives.md"), "w") as f:
        f.write(format_markdown(table) + "\n")
    with open(os.path.join(workdir, "objectives.csv"), "w") as f:
        f.write(format_csv(table))
    plot_psnr_vs_steps(table, os.path.join(workdir, "objectives_psnr_vs_steps.png"))
    sample_picture(workdirs, os.path.join(workdir, "objectives_samples.png"),
                   steps=max(steps_list))
    return table


def main(argv) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    names = [n.strip() for n in f.objectives.split(",") if n.strip()]
    for n in names:
        if n not in OBJECTIVES:
            raise app.UsageError(f"--objectives: {n!r} is unknown; use {', '.join(OBJECTIVES)}")
    steps_list = [int(s) for s in f.steps_list.split(",")]
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    from mtlgen_jax import cpu_devices

    cpu_devices.configure(f.config)
    run_experiment(f.config, f.workdir, names, steps_list)
    print(open(os.path.join(f.workdir, "objectives.md")).read())


def _cli() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Holds one run per objective and the tables.")
    flags.DEFINE_string("objectives", ",".join(OBJECTIVES), "Comma-separated objectives.")
    flags.DEFINE_string("steps_list", ",".join(map(str, DEFAULT_STEPS)), "Sampling steps.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    _cli()
