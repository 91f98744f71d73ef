"""What training adds over each task's start: a run evaluated with its task heads scaled.

    python bench/start_alone.py runs/default [--tasks super_resolve,inpaint] \
        [--scales 0,0.5,1] [--split test] [--json out.json]

A residual or bridge task's estimate is ``start + head`` (``Task.start``: the
back-projection, the smooth fill, ...; the heads of those tasks are zero-initialised).
The head's output layer is linear, so scaling its kernel and bias by s scales the
learned correction by s: s = 0 returns the start alone, s = 1 the run as trained.
Each scale is evaluated on the same batches; the primary metric (PSNR) of each task
at each scale tells whether the correction helps on that split, and whether it points
the right way but overshoots (a maximum between 0 and 1). A diagnostic: choosing a
scale by the test split would be tuning on the test set.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

import mtlgen_jax as mg  # noqa: E402

OUTPUT_LAYERS = ("Conv_0", "out")  # the U-Net head's output conv, the DiT head's Dense


def scale_heads(params, tasks, scale: float):
    """``params`` with the output layer of each ``head_<task>`` of ``tasks`` times ``scale``."""
    out = dict(params)
    for t in tasks:
        head = dict(params[f"head_{t}"])
        layer = next(name for name in OUTPUT_LAYERS if name in head)
        head[layer] = jax.tree.map(lambda x: x * scale, head[layer])
        out[f"head_{t}"] = head
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--tasks", default="super_resolve,inpaint")
    p.add_argument("--scales", default="0,1")
    p.add_argument("--split", default="test")
    p.add_argument("--num_batches", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    run = mg.restore(args.workdir)
    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        task = run.comp.tasks[run.comp.task_index(t)]
        if not task.uses_start:
            raise SystemExit(f"task {t!r} predicts no correction over a start "
                             "(objective=regression/diffusion without residual).")
    trained = run.params
    out = {t: {} for t in tasks}
    for s in (float(x) for x in args.scales.split(",")):
        run.params = scale_heads(trained, tasks, s)
        metrics = run.evaluate(split=args.split, num_batches=args.num_batches)
        for t in tasks:
            out[t][f"{s:g}"] = float(metrics[f"eval/{t}/psnr"])
            out[t]["baseline"] = float(metrics[f"eval/{t}/psnr_baseline"])
    text = json.dumps({"workdir": args.workdir, "split": args.split, "psnr": out}, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
