"""A trained run at each sampler step count, with and without the self-ensemble.

    python bench/operating_points.py runs/default [--steps 1,4] [--ensemble both]
        [--split test] [--num_batches 2] [--json out.json]

Each row evaluates the run (``Run.evaluate``, the same batches and conditions for every
row) at one step count (bridge tasks: 1 = the network's estimate, more steps add
detail; one-pass tasks take none) with the self-ensemble on or off (``--ensemble on``,
``off`` or ``both``), and prints each restoration task's PSNR and gain over its trivial
baseline, and the sharpness of those that report it. ``--split train`` evaluates on
training crops: choose operating points there, and confirm them on the test split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mtlgen_jax as mg  # noqa: E402

ENSEMBLE = {"on": (True,), "off": (False,), "both": (False, True)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--steps", default="1,4")
    p.add_argument("--ensemble", default="both", choices=tuple(ENSEMBLE))
    p.add_argument("--split", default="test")
    p.add_argument("--num_batches", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    steps = [int(s) for s in args.steps.split(",") if s]
    rows = []
    for ensemble in ENSEMBLE[args.ensemble]:
        run = mg.restore(args.workdir, overrides={"eval.self_ensemble": ensemble})
        for s in steps:
            metrics = run.evaluate(split=args.split, num_batches=args.num_batches, steps=s)
            rows.append({"steps": s, "self_ensemble": ensemble,
                         "metrics": {k: float(v) for k, v in metrics.items()}})
    tasks = [t for t in run.config.tasks.names.split(",") if t]
    print(f"{args.workdir}, {args.split} split: PSNR dB (gain over the trivial baseline) "
          "[sharpness]")
    for row in rows:
        cells = []
        for t in tasks:
            m = row["metrics"]
            if f"eval/{t}/psnr" not in m:
                continue
            psnr, gain = m[f"eval/{t}/psnr"], m[f"eval/{t}/psnr"] - m[f"eval/{t}/psnr_baseline"]
            cell = f"{t} {psnr:.2f} ({gain:+.2f})"
            if f"eval/{t}/sharpness" in m:
                cell += f" [{m[f'eval/{t}/sharpness']:.2f}]"
            cells.append(cell)
        print(f"{row['steps']} step(s), ensemble {'on ' if row['self_ensemble'] else 'off'}: "
              + ", ".join(cells))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"workdir": args.workdir, "split": args.split, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
