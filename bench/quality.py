"""Quality targets: train a config (timed), evaluate it, compare with the targets.

    python bench/quality.py --config configs/default.py --workdir runs/default --json q.json
    python bench/quality.py --config configs/digits.py --workdir runs/digits --json d.json

Runs ``launch.py`` (training resumes/skips if the workdir already finished; the
wall time is only measured for a run trained here), reads the final evaluation
row of ``metrics.jsonl`` and prints each task's metric, its baseline, the gain and
the target:

* photo_patches (default): denoise >= +5 dB PSNR over the noisy input,
  super_resolve >= +1 dB over bicubic, inpaint >= +3 dB over the mean fill
  (inside the hole), colorize >= +1.5 dB over the gray image (issue #13's targets; one
  sample per condition at the config's ``eval.sample_steps``);
* the detailed operating point (``--detailed_steps``, default 16; 0 skips it): every
  task that reports sharpness (denoise, super-resolution), sampled at that many steps
  without the self-ensemble (a posterior sample, not a mean of eight), has a sharpness
  in [0.75, 1.33] and a PSNR no more than 3 dB under its own 1-step PSNR (issue #13).
  16 steps were chosen on training crops (``bench/operating_points.py --split train``)
  once the relative loss was floored: super-resolution 0.90 at -2.56 dB there (8: 0.81
  at -2.11, 25: 0.94 at -2.72); before the floors it took 25 (16: 0.77, the band's edge);
* digits: class-conditional samples classified as their label >= 90%.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

GAIN_TARGETS_DB = {"denoise": 5.0, "super_resolve": 1.0, "inpaint": 3.0, "colorize": 1.5}
ACCURACY_TARGET = 0.90
SHARPNESS_BAND = (0.75, 1.33)  # 1 = as detailed as the photographs
DETAILED_MAX_DROP_DB = 3.0  # a posterior sample has about twice the posterior mean's error


def final_eval(workdir: str) -> dict:
    from mtlgen_jax.writers import read_metrics

    rows = [r for r in read_metrics(workdir) if any(k.startswith("eval/") for k in r)]
    if not rows:
        raise SystemExit(f"no evaluation in {workdir}/metrics.jsonl")
    return rows[-1]


def table(ev: dict) -> list[dict]:
    out = []
    for task, target in GAIN_TARGETS_DB.items():
        if f"eval/{task}/psnr" in ev:
            psnr, base = ev[f"eval/{task}/psnr"], ev[f"eval/{task}/psnr_baseline"]
            out.append(dict(task=task, metric="psnr_db", value=psnr, baseline=base,
                            gain=psnr - base, target=f">= +{target} dB",
                            met=psnr - base >= target))
    if "eval/generate/accuracy" in ev:
        acc = ev["eval/generate/accuracy"]
        out.append(dict(task="generate", metric="accuracy", value=acc,
                        baseline=ev.get("eval/generate/accuracy_real"), gain=None,
                        target=f">= {ACCURACY_TARGET:.0%}", met=acc >= ACCURACY_TARGET,
                        frechet=ev.get("eval/generate/frechet")))
    return out


def detailed_rows(one_step: dict, detailed: dict, steps: int) -> list[dict]:
    """The detailed-point rows from two evaluations without the self-ensemble (1 step and
    ``steps``): each task with a sharpness, met when it lies in SHARPNESS_BAND and the
    PSNR is at most DETAILED_MAX_DROP_DB under the 1-step PSNR."""
    out = []
    for key in sorted(k for k in detailed if k.endswith("/sharpness")):
        task = key.split("/")[1]
        sharp, psnr = detailed[key], detailed[f"eval/{task}/psnr"]
        drop = one_step[f"eval/{task}/psnr"] - psnr
        low, high = SHARPNESS_BAND
        out.append(dict(task=task, metric=f"sharp@{steps}", value=sharp, baseline=None,
                        gain=None, psnr=psnr, drop_db=drop,
                        target=f"[{low}, {high}], -{DETAILED_MAX_DROP_DB:g} dB",
                        met=bool(low <= sharp <= high and drop <= DETAILED_MAX_DROP_DB)))
    return out


def detailed_point(workdir: str, steps: int) -> list[dict]:
    """Evaluates the trained run at 1 and ``steps`` sampler steps, without the ensemble,
    on the final evaluation's test batches (``eval.num_batches``)."""
    import mtlgen_jax as mg

    run = mg.restore(workdir, overrides={"eval.self_ensemble": False})
    n = run.config.eval.num_batches
    return detailed_rows(run.evaluate(num_batches=n, steps=1),
                         run.evaluate(num_batches=n, steps=steps), steps)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--json", default=None)
    p.add_argument("--detailed_steps", type=int, default=16,
                   help="sampler steps of the detailed operating point (0: skip the check)")
    p.add_argument("overrides", nargs="*", help="--config.KEY=VALUE overrides for launch.py")
    args = p.parse_args()
    t0 = time.perf_counter()
    subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config", args.config,
                    "--workdir", args.workdir, *args.overrides], check=True)
    wall = time.perf_counter() - t0
    ev = final_eval(args.workdir)
    rows = table(ev)
    if args.detailed_steps and any(k.endswith("/sharpness") for k in ev):
        rows += detailed_point(args.workdir, args.detailed_steps)
    print(f"\n{args.config} -> {args.workdir}: step {ev['step']}, wall time of this "
          f"invocation {wall / 60:.1f} min\n")
    print(f"{'task':<14}{'metric':<10}{'value':>9}{'baseline':>10}{'gain':>8}  target      met")
    for r in rows:
        gain = "" if r["gain"] is None else f"{r['gain']:+.2f}"
        base = "" if r["baseline"] is None else f"{r['baseline']:.3f}"
        extra = (f"  (PSNR {r['psnr']:.2f} dB, {r['drop_db']:+.2f} dB under 1 step)"
                 if "drop_db" in r else "")
        print(f"{r['task']:<14}{r['metric']:<10}{r['value']:>9.3f}{base:>10}{gain:>8}  "
              f"{r['target']:<11} {'yes' if r['met'] else 'NO'}{extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": args.config, "step": ev["step"], "wall_s": wall,
                       "rows": rows, "eval": ev}, f, indent=2)


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
