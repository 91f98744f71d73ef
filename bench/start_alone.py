"""What training adds over each task's start: a run evaluated with task heads zeroed.

    python bench/start_alone.py runs/default [--tasks super_resolve,inpaint] [--split test]

A residual or bridge task's estimate is ``start + head`` (``Task.start``: the
back-projection, the smooth fill, ...), so a zero head returns its start exactly (the
heads of those tasks are zero-initialised). This evaluates the run twice on the same
batches -- as trained, and with the named tasks' heads zeroed -- and prints each
task's primary metric both ways: whether the learned correction helps on that split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import mtlgen_jax as mg  # noqa: E402


def zero_heads(params, tasks):
    """``params`` with the ``head_<task>`` subtrees of ``tasks`` set to zero."""
    names = {f"head_{t}" for t in tasks}
    return {k: jax.tree.map(jnp.zeros_like, v) if k in names else v for k, v in params.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--tasks", default="super_resolve,inpaint")
    p.add_argument("--split", default="test")
    p.add_argument("--num_batches", type=int, default=2)
    args = p.parse_args(argv)
    run = mg.restore(args.workdir)
    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        task = run.comp.tasks[run.comp.task_index(t)]
        if not (task.residual or task.objective == "bridge"):
            raise SystemExit(f"task {t!r} predicts no correction over a start "
                             "(objective=regression/diffusion without residual).")
    trained = run.evaluate(split=args.split, num_batches=args.num_batches)
    run.params = zero_heads(run.params, tasks)
    alone = run.evaluate(split=args.split, num_batches=args.num_batches)
    out = {}
    for t in tasks:
        key = f"eval/{t}/psnr"
        out[t] = {"trained": float(trained[key]), "start_alone": float(alone[key]),
                  "baseline": float(trained[f"{key}_baseline"])}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
