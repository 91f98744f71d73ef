"""Puts a run's sample grids side by side: one PNG of every task.

    python docs/sample_strip.py runs/digits --out docs/digits_samples.png
    python launch.py --config configs/default.py --workdir runs/default --mode sample \
        --sample_num 8 && python docs/sample_strip.py runs/default --kind sample \
        --out docs/default_samples.png

``--kind eval``: the grids the run's evaluations wrote (``samples/<task>_step<N>.png``);
``--kind sample``: those of ``launch.py --mode sample`` (``<task>_sample_step<N>.png``,
at the run's ``eval.sample_steps``). The tasks in the run's order (its ``config.json``),
the last step unless ``--step``; ``--gap`` white pixels between grids.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from PIL import Image


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workdir")
    p.add_argument("--out", required=True)
    p.add_argument("--step", type=int, default=None)
    p.add_argument("--gap", type=int, default=6)
    p.add_argument("--kind", default="eval", choices=("eval", "sample"))
    args = p.parse_args(argv)
    samples = Path(args.workdir) / "samples"
    tasks = json.loads((Path(args.workdir) / "config.json").read_text())["tasks"]["names"]
    tasks = [t for t in tasks.split(",") if t]
    infix = "_sample_step" if args.kind == "sample" else "_step"
    pattern = re.compile(rf"^({'|'.join(map(re.escape, tasks))}){infix}(\d+)\.png$")
    steps = [int(m.group(2)) for f in samples.glob("*.png") if (m := pattern.match(f.name))]
    if not steps:
        raise SystemExit(f"no {args.kind} grids in {samples}: "
                         + ("train the run to an eval step." if args.kind == "eval"
                            else "run launch.py --mode sample on it."))
    step = args.step if args.step is not None else max(steps)
    grids = [Image.open(samples / f"{t}{infix}{step}.png").convert("RGB") for t in tasks]
    width = sum(g.width for g in grids) + args.gap * (len(grids) - 1)
    strip = Image.new("RGB", (width, max(g.height for g in grids)), "white")
    x = 0
    for g in grids:
        strip.paste(g, (x, 0))
        x += g.width + args.gap
    strip.save(args.out)
    print(f"{args.out}: {', '.join(tasks)} at step {step}")


if __name__ == "__main__":
    main()
