"""``launch.py --mode eval|sample``: the library calls behind them."""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import logging

from mtlgen_jax import api, evaluate
from mtlgen_jax.images import to_float


def eval_workdir(workdir: str, *, step: int | None = None) -> dict[str, float]:
    """Evaluates a workdir's checkpoint; prints the table and appends to metrics.jsonl."""
    run = api.restore(workdir, step=step)
    results = run.evaluate(num_batches=run.config.eval.num_batches)
    print(evaluate.format_table(results))
    if jax.process_index() == 0:
        from mtlgen_jax.writers import MetricWriter

        writer = MetricWriter(workdir)
        writer.write(run.step, results)
        writer.close()
    return results


def sample_workdir(workdir: str, *, step: int | None = None, num: int = 16,
                   steps: int = 50) -> list[str]:
    """Writes ``samples/<task>_sample_step<N>.png`` grids for every task of a workdir."""
    from mtlgen_jax import data

    run = api.restore(workdir, step=step)
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
            out = run.sample(t.name, rng=rng, steps=steps, guidance=run.config.eval.guidance, **kw)
            cond = np.zeros_like(to_float(batch["image"]))
        path = os.path.join(workdir, "samples", f"{t.name}_sample_step{run.step}.png")
        evaluate.save_grid(path, cond, to_float(out), to_float(batch["image"]),
                           show_condition=t.has_condition)
        logging.info("wrote %s", path)
        paths.append(path)
    return paths
