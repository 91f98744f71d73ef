"""Puts a run's evaluation grids (``WORKDIR/samples/<task>_step<N>.png``) side by side.

    python docs/sample_strip.py runs/default --out docs/default_samples.png
    python docs/sample_strip.py runs/digits --out docs/digits_samples.png

The tasks in the run's order (its ``config.json``), the last evaluated step unless
``--step``; ``--gap`` white pixels between grids.
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
    args = p.parse_args(argv)
    samples = Path(args.workdir) / "samples"
    tasks = json.loads((Path(args.workdir) / "config.json").read_text())["tasks"]["names"]
    tasks = [t for t in tasks.split(",") if t]
    steps = [int(m.group(1)) for f in samples.glob("*_step*.png")
             if (m := re.search(r"_step(\d+)\.png$", f.name))]
    if not steps:
        raise SystemExit(f"no evaluation grids in {samples}: train the run to an eval step.")
    step = args.step if args.step is not None else max(steps)
    grids = [Image.open(samples / f"{t}_step{step}.png").convert("RGB") for t in tasks]
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
