"""The Δm experiment's two pictures (matplotlib: the `bench` extra; without it, none).

* ``tradeoff``: Δm against step time relative to `ew`, one point per method (mean ± std
  over its seeds), budget A filled and budget B hollow -- the trade-off figure of the
  FAMO and Nash-MTL papers. Up and to the left is better.
* ``curves``: per task, its PSNR gain over the trivial baseline against the number of
  that task's training images a model has seen, for the single-task models and a few
  multi-task ones (mean over seeds): does sharing make each example worth more, or
  less? A multi-task model sees ``step x batch x share`` of a task's images by step
  ``step`` (``share`` = the task's mixture weight over the sum), a specialist
  ``step x batch``. The points are the evaluations during training (``eval_every_steps``,
  on the same ``eval.num_batches_during_training`` batches each time); the final
  evaluation, on ``eval.num_batches`` batches, is in the tables, not on the curves.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging

from mtlgen_jax import writers as writers_lib


def _pyplot(path: str):
    try:
        import matplotlib
    except ImportError:
        logging.warning("matplotlib is not installed (pip install -e '.[bench]'): %s is not "
                        "drawn; the tables are written.", path)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def step_axis(rows_by_budget: Mapping[str, Sequence], *, reference: str, base: str
              ) -> tuple[str, Callable[[Any], float]]:
    """The trade-off picture's x axis: (label, row -> x). Step time relative to ``base``
    where some multi-task row has one; else (no ``base`` row in the table) the step time
    in ms, so that a table of other strategies still gets its points."""
    multi = [r for rows in rows_by_budget.values() for r in rows if r.method != reference]
    if any(math.isfinite(r.time_vs_base) for r in multi):
        return f"train-step time / {base}", lambda r: r.time_vs_base
    return "train-step time (ms)", lambda r: r.step_ms


def tradeoff(rows_by_budget: Mapping[str, Sequence], path: str, *, reference: str,
             base: str) -> bool:
    """Draws Δm (%) against step time / ``base`` for every multi-task row of each budget
    (``Row``s of ``delta_m.build_rows``); returns whether a picture was written.

    A table without a ``base`` row (e.g. ``--strategies famo`` alone) has no relative
    step times: then the x axis is the step time itself, in ms."""
    plt = _pyplot(path)
    if plt is None:
        return False
    xlabel, x_of = step_axis(rows_by_budget, reference=reference, base=base)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = {}
    first = next(iter(rows_by_budget), None)
    for budget, rows in rows_by_budget.items():
        for r in rows:
            x = x_of(r)
            if r.method == reference or not math.isfinite(x):
                continue
            color = colors.setdefault(r.method, f"C{len(colors) % 10}")
            err = r.delta_m_std if math.isfinite(r.delta_m_std) else None
            ax.errorbar(x, r.delta_m, yerr=err, fmt="o", color=color,
                        mfc=color if budget == "A" else "white", capsize=3, ms=7,
                        label=r.method if budget == first else None)
            if budget == first:
                ax.annotate(r.method, (x, r.delta_m), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
    ax.axhline(0.0, color="gray", ls="--", lw=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Δm % vs the single-task models (> 0: better)")
    budgets = " and ".join(f"{b} ({'filled' if i == 0 else 'hollow'})"
                           for i, b in enumerate(rows_by_budget))
    ax.set_title(f"Δm against cost, budget {budgets}; bars: std over seeds", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def eval_points(workdir: str, task: str, metric: str = "psnr") -> list[tuple[int, float]]:
    """(step, gain) of every evaluation of ``task`` in a run's metrics.jsonl: its
    ``metric`` minus the trivial baseline's on the same crops (``<metric>_baseline``).

    The gain, not the metric: the evaluations during training score
    ``eval.num_batches_during_training`` batches, the final one ``eval.num_batches``, and
    the baseline takes out most of the difference between those crop sets. Where a step
    was evaluated twice (during training, then the final evaluation), the later one.
    """
    found = {}
    key = f"eval/{task}/{metric}"
    for row in writers_lib.read_metrics(workdir):
        if key in row and f"{key}_baseline" in row and "step" in row:
            found[int(row["step"])] = float(row[key]) - float(row[f"{key}_baseline"])
    return sorted(found.items())


def mean_curve(runs: Sequence[str], task: str, images_per_step: float,
               before: int | None = None) -> list[tuple[float, float]]:
    """(images of ``task`` seen, mean PSNR gain over ``runs``) at the steps every run
    evaluated (those < ``before`` where given)."""
    per_run = [dict(eval_points(w, task)) for w in runs]
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    steps = [s for s in steps if before is None or s < before]
    return [(s * images_per_step, statistics.fmean(p[s] for p in per_run)) for s in steps]


def curves(tasks: Sequence[str],
           series: Mapping[str, Mapping[str, tuple[Sequence[str], float, int | None]]],
           path: str) -> bool:
    """Draws per-task PSNR gain against that task's training images seen.

    Args:
      tasks: one panel each.
      series: label -> task -> (the run workdirs to average, images of the task per step,
        the runs' last step: its evaluation, on other crops, is left out, or None).
      path: the PNG.

    Returns whether a picture was written.
    """
    plt = _pyplot(path)
    if plt is None:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 3.3), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for i, (label, per_task) in enumerate(series.items()):
            if task not in per_task:
                continue
            runs, per_step, last = per_task[task]
            pts = mean_curve(runs, task, per_step, before=last)
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, color=f"C{i}", label=label,
                        ls="--" if i == 0 else "-")
        ax.set_xscale("log")
        ax.set_xlabel(f"{task} training images seen")
        ax.set_ylabel("PSNR gain over the trivial baseline (dB)")
        ax.set_title(task)
    for ax in axes[0]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
            break
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
