r"""The Δm table: every weighting strategy against single-task models, at the same budget.

    python -m mtlgen_jax.experiments.delta_m --config configs/default.py \
        --workdir runs/delta_m --strategies ew,uw,famo,pcgrad [--steps N] [--config.KEY=VALUE] \
        [--seeds 0,1,2 --seeded ew,famo] [--budgets A,B] [--equal_params_width 32] \
        [--rows 'ew-film=ew:model.task_film=True;...']

Trains one single-task model per task (`<workdir>/single_<task>`: the config with
`tasks.names` = that task and `ew`) and one multi-task model per strategy
(`<workdir>/mtl_<strategy>`; `<name>-ub`: a gradient method in representation
mode), each with `mtlgen_jax.train.train_and_evaluate`,
then writes `<workdir>/delta_m.md` and `<workdir>/delta_m.csv`, and two pictures
(`delta_m_tradeoff.png`, `delta_m_curves.png`: `delta_m_plots`).

Budgets (`--budgets`): **A**, every model trains the same number of steps (`--steps`,
else `num_train_steps`) on the same global batch (`batch_size`): a single-task model
spends the whole batch on its task, the multi-task model splits each batch among the
tasks by the mixture weights (`tasks.<name>.weight`), so it sees about 1/T as many
examples of each task, with one network instead of T (the specialists cost T x the
compute). **B**, each specialist trains its task's share of the multi-task steps
(steps / T with equal weights): equal examples per task and equal total compute; its
tables are `delta_m_B.md` / `.csv`.

Seeds (`--seeds 0,1,2`): the single-task models, the equal-parameter row and the
strategies named in `--seeded` train once per seed; each cell is then the mean ± the
sample std over seeds, and each seed's Δm is taken against the mean of the single-task
seeds. `--equal_params_width W` adds `ew-w<W>`, an `ew` model of width W; `--rows`
adds named multi-task rows of a strategy with config overrides (e.g. per-task FiLM or
LoRA, `model.task_film=True`), every seed.

Metrics are those of each run's final evaluation (`mtlgen_jax.evaluate`, the
`eval/<task>/<metric>` row at the last step of `metrics.jsonl`). Δm (Maninis et
al., CVPR 2019) uses one primary metric per task, the first of its `Task.metrics`:
PSNR for the restoration tasks, the judge's accuracy for class-conditional
`generate` on digits (a task whose run does not report its primary metric, e.g.
`generate` on other datasets, is left out of Δm):

    Δm = 100 / T * sum_t (-1)^{l_t} (M_mtl,t - M_single,t) / M_single,t,

l_t = 1 where lower is better; Δm > 0 means better than the single-task models.
Step time is the median of `batch_size / images_per_sec` over the logged
windows after the first (which holds the compilation); the single-task row
sums its T models.

Finished runs are reused: a sub-workdir with a checkpoint at the final step and
its final evaluation is not trained again; an unfinished one resumes from its
latest checkpoint (see `Trainer`); one with the checkpoint but no final
evaluation is evaluated (`mtlgen_jax.cli.eval_workdir`). `--finished_only` trains
nothing and writes the tables and pictures of the runs finished so far.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence

import ml_collections
from absl import logging

from mtlgen_jax import tasks as tasks_lib
from mtlgen_jax import weighting
from mtlgen_jax import writers as writers_lib
from mtlgen_jax.components import weighting_hparams

# Metrics shown in the table, in this order, and their direction.
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "accuracy": True, "frechet": False}
REFERENCE = "single-task"  # the method name of the reference row
BASE_STRATEGY = "ew"  # step times are relative to this strategy


def delta_m(results: Mapping[str, float], reference: Mapping[str, float],
            higher_is_better: Mapping[str, bool]) -> float:
    """Δm in percent (Maninis et al., 2019) over the metrics named in `higher_is_better`.

    Args:
      results: metric name -> value of the multi-task model.
      reference: metric name -> value of the single-task models.
      higher_is_better: the metrics to average (one per task) -> their direction.

    Returns:
      100 / T * sum_t s_t (results[t] - reference[t]) / reference[t], s_t = +1 where
      higher is better, -1 where lower is; > 0 means better than the reference.

    Raises:
      ValueError: no metric, a metric missing from either side, or a zero reference.
    """
    if not higher_is_better:
        raise ValueError("delta_m needs at least one metric")
    total = 0.0
    for key, higher in higher_is_better.items():
        if key not in results or key not in reference:
            side = "results" if key not in results else "reference"
            raise ValueError(f"delta_m: metric {key!r} is missing from the {side}")
        base = float(reference[key])
        if base == 0.0 or not math.isfinite(base):
            raise ValueError(f"delta_m: the reference {key}={base} cannot be divided by")
        sign = 1.0 if higher else -1.0
        total += sign * (float(results[key]) - base) / base
    return 100.0 * total / len(higher_is_better)


@dataclasses.dataclass
class Row:
    """One line of the table: a method's mean over its seeds (std where it has several)."""

    method: str  # REFERENCE or a strategy name
    metrics: dict[str, float]  # '<task>/<metric>' -> mean over seeds
    delta_m: float  # percent, mean over seeds; 0 for the reference
    step_ms: float  # steady-state train-step time (ms); nan if unknown
    time_vs_base: float = math.nan  # step_ms / step_ms of BASE_STRATEGY
    metrics_std: dict[str, float] = dataclasses.field(default_factory=dict)  # over seeds
    delta_m_std: float = math.nan  # over seeds (nan: one seed)
    seeds: int = 1


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; nan for a single value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_std of no values")
    std = statistics.stdev(values) if len(values) > 1 else math.nan
    return statistics.fmean(values), std


def columns(metric_keys: Sequence[str], with_std: bool = False) -> list[str]:
    """The table's columns: method, the metrics, Δm, step times (with seeds: the number of
    seeds after the method and a ``_std`` column after each metric and Δm, in the CSV)."""
    if not with_std:
        return ["method", *metric_keys, "delta_m_pct", "step_ms",
                f"step_time_vs_{BASE_STRATEGY}"]
    return ["method", "seeds", *(c for k in metric_keys for c in (k, f"{k}_std")),
            "delta_m_pct", "delta_m_pct_std", "step_ms", f"step_time_vs_{BASE_STRATEGY}"]


# Number formats: (metrics, Δm, step_ms, ratio); blank cells for missing / nan values.
_MD_FORMATS = (".4f", "+.2f", ".1f", ".2f")
_CSV_FORMATS = (".6g",) * 4


def _num(v, f) -> str:
    return "" if v is None or not math.isfinite(v) else format(v, f)


def _cells(row: Row, metric_keys: Sequence[str], formats: Sequence[str],
           with_std: bool = False) -> list[str]:
    tail = [_num(row.step_ms, formats[2]), _num(row.time_vs_base, formats[3])]
    if not with_std:
        return [row.method, *(_num(row.metrics.get(k), formats[0]) for k in metric_keys),
                _num(row.delta_m, formats[1]), *tail]
    pairs = [(row.metrics.get(k), row.metrics_std.get(k), formats[0]) for k in metric_keys]
    return [row.method, str(row.seeds),
            *(c for v, sd, f in pairs for c in (_num(v, f), _num(sd, f))),
            _num(row.delta_m, formats[1]), _num(row.delta_m_std, formats[0]), *tail]


def _md_cell(v, sd, f) -> str:
    """'mean ± std' (std over seeds) or 'mean'."""
    text = _num(v, f)
    return f"{text} ± {_num(sd, f.lstrip('+'))}" if text and sd is not None and math.isfinite(sd) \
        else text


def format_table(rows: Sequence[Row], metric_keys: Sequence[str]) -> str:
    """A Markdown table: one row per method, the columns of `columns(metric_keys)`; with
    several seeds a 'seeds' column, and each mean shown as 'mean ± std'."""
    with_std = any(r.seeds > 1 for r in rows)
    head = columns(metric_keys)
    if with_std:
        head = ["method", "seeds", *head[1:]]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        if with_std:
            f = _MD_FORMATS
            cells = [r.method, str(r.seeds),
                     *(_md_cell(r.metrics.get(k), r.metrics_std.get(k), f[0])
                       for k in metric_keys),
                     _md_cell(r.delta_m, r.delta_m_std, f[1]), _num(r.step_ms, f[2]),
                     _num(r.time_vs_base, f[3])]
        else:
            cells = _cells(r, metric_keys, _MD_FORMATS)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_csv(rows: Sequence[Row], metric_keys: Sequence[str]) -> str:
    """The same table as CSV (full precision; with several seeds, ``_std`` columns)."""
    with_std = any(r.seeds > 1 for r in rows)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns(metric_keys, with_std))
    for r in rows:
        w.writerow(_cells(r, metric_keys, _CSV_FORMATS, with_std))
    return buf.getvalue()


def write_tables(workdir: str, rows: Sequence[Row], metric_keys: Sequence[str],
                 notes: str = "", name: str = "delta_m") -> tuple[str, str]:
    """Writes `<workdir>/<name>.md` (notes, then the table) and `<name>.csv`; returns paths."""
    os.makedirs(workdir, exist_ok=True)
    md, csv_path = os.path.join(workdir, f"{name}.md"), os.path.join(workdir, f"{name}.csv")
    with open(md, "w") as f:
        f.write((notes.rstrip() + "\n\n" if notes else "") + format_table(rows, metric_keys)
                + "\n")
    with open(csv_path, "w") as f:
        f.write(format_csv(rows, metric_keys))
    return md, csv_path


# --- reading runs ---------------------------------------------------------------------
def final_eval(workdir: str, step: int) -> dict[str, float] | None:
    """'<task>/<metric>' -> value of the last evaluation at `step` in metrics.jsonl, or None."""
    found = None
    for row in writers_lib.read_metrics(workdir):
        if row.get("step") == step and any(k.startswith("eval/") for k in row):
            found = {k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")}
    return found


def step_seconds(workdir: str, batch_size: int) -> float:
    """Median train-step time (s) over the logged windows after the first; nan if none."""
    rates = [r["images_per_sec"] for r in writers_lib.read_metrics(workdir)
             if "images_per_sec" in r and r["images_per_sec"] > 0]
    if len(rates) < 2:
        return math.nan
    return statistics.median(batch_size / r for r in rates[1:])


def has_checkpoint(workdir: str, step: int) -> bool:
    """Whether the (committed) orbax checkpoint of `step` exists in workdir."""
    from mtlgen_jax.checkpoint import CHECKPOINT_DIR

    return os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR, str(step)))


# --- configs --------------------------------------------------------------------------
def task_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    return tuple(t.strip() for t in config.tasks.names.split(",") if t.strip())


def strategy_hparams(weighting_cfg: ml_collections.ConfigDict, name: str) -> dict:
    """The hyperparameters in `config.weighting` (extra keys and the `hparams` string)
    that strategy `name` accepts."""
    accepted = set(weighting.hparam_names(name)) if name in weighting.NAMES else set()
    return {k: v for k, v in weighting_hparams(weighting_cfg).items() if k in accepted}


def parse_strategies(text: str | Sequence[str], config: ml_collections.ConfigDict) -> tuple:
    """Strategy specs from 'a,b,c'; each is built once so a bad one fails now.

    A spec is a strategy name, or a gradient method's name + '-ub' for its
    representation mode (``weighting.grad_space='representation'``), e.g. 'mgda-ub'.

    Raises:
      ValueError: no name, an unknown name or bad hyperparameters (the weighting
        module's message), '-ub' on a loss weighting, or a `config.weighting` key
        that no listed strategy takes.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    specs = tuple(dict.fromkeys(s.strip() for s in items if s.strip()))
    if not specs:
        raise ValueError("--strategies is empty; give comma-separated names from "
                         f"{', '.join(weighting.NAMES)} (a gradient method + '-ub': its "
                         "representation mode)")
    num_tasks = len(task_names(config))
    for spec in specs:
        name, space = weighting.parse_spec(spec)
        strategy = weighting.create(name, num_tasks, **strategy_hparams(config.weighting, name))
        if space != "params" and not strategy.uses_task_grads:
            raise ValueError(f"{spec!r}: '{weighting.UB_SUFFIX}' (representation mode) applies "
                             f"to gradient methods only; {name!r} weighs losses.")
    names = {weighting.parse_spec(s)[0] for s in specs}
    extra = set(weighting_hparams(config.weighting))
    unused = sorted(extra - {k for n in names for k in strategy_hparams(config.weighting, n)})
    if unused:
        raise ValueError(f"config.weighting.{unused[0]} is a hyperparameter of none of "
                         f"{', '.join(specs)}")
    return specs


def _variant(config, *, tasks: str, strategy: str, hparams: dict, steps: int,
             grad_space: str = "params"):
    cfg = config.copy_and_resolve_references()
    cfg.unlock()
    cfg.tasks.names = tasks
    cfg.weighting = ml_collections.ConfigDict(dict(name=strategy, grad_space=grad_space,
                                                   **hparams))
    cfg.num_train_steps = steps
    return cfg


def single_task_config(config, task: str, steps: int) -> ml_collections.ConfigDict:
    """`config` for task alone (whole batch), equal weighting, `steps` steps."""
    return _variant(config, tasks=task, strategy="ew", hparams={}, steps=steps)


def multi_task_config(config, spec: str, steps: int) -> ml_collections.ConfigDict:
    """`config` with weighting `spec` (a name or 'name-ub'), its hyperparameters, `steps`."""
    name, space = weighting.parse_spec(spec)
    return _variant(config, tasks=config.tasks.names, strategy=name,
                    hparams=strategy_hparams(config.weighting, name), steps=steps,
                    grad_space=space)


# --- the experiment -------------------------------------------------------------------
def ensure_run(config, workdir: str, *, train_fn: Callable, eval_fn: Callable) -> dict:
    """Trains (or resumes, or only evaluates) a run to its last step; returns its final eval."""
    steps = config.num_train_steps
    results = final_eval(workdir, steps)
    if results is not None and has_checkpoint(workdir, steps):
        logging.info("reusing %s (finished at step %d)", workdir, steps)
        return results
    if not has_checkpoint(workdir, steps):
        logging.info("training %s to step %d", workdir, steps)
        train_fn(config, workdir)
    if not has_checkpoint(workdir, steps):
        raise RuntimeError(
            f"{workdir} has no checkpoint at step {steps} after training: it stopped early "
            "(preempted? run the same command again to resume) or the workdir holds a run "
            "trained past that step (use another --workdir).")
    results = final_eval(workdir, steps)
    if results is None:
        logging.info("evaluating %s at step %d", workdir, steps)
        eval_fn(workdir, step=steps)
        results = final_eval(workdir, steps)
    if results is None:
        raise RuntimeError(f"{workdir}: no evaluation at step {steps} in metrics.jsonl")
    return results


def primary_metrics(tasks: Sequence[str], reference: Mapping[str, float]) -> dict[str, bool]:
    """'<task>/<metric>' -> higher_is_better for the tasks that have their primary metric."""
    out = {}
    for task in tasks:
        metric = tasks_lib.get_class(task).metrics[0]
        if f"{task}/{metric}" in reference:
            out[f"{task}/{metric}"] = HIGHER_IS_BETTER[metric]
    return out


def _seeds(runs) -> list[tuple[dict, float]]:
    """One (eval, step s) or a list of them, one per seed -> the list."""
    return [runs] if isinstance(runs, tuple) else list(runs)


def _mean_metrics(evals: Sequence[Mapping[str, float]], keep=lambda k: True):
    """Per key present in every eval: (means, stds) over the evals."""
    keys = [k for k in evals[0] if keep(k) and all(k in e for e in evals)]
    stats = {k: mean_std([e[k] for e in evals]) for k in keys}
    return {k: m for k, (m, _) in stats.items()}, {k: sd for k, (_, sd) in stats.items()}


def build_rows(tasks: Sequence[str], single: Mapping, multi: Mapping
               ) -> tuple[list[Row], list[str], dict]:
    """Rows (reference first), the metric columns and the Δm metrics.

    Args:
      tasks: the task names.
      single: task -> (its single-task final eval '<task>/<metric>' -> value, step s), or
        a list of those, one per seed.
      multi: method -> (final eval, step s), or a list of them, one per seed.

    With several seeds, each metric is the mean over seeds (± the sample std); the
    reference is the mean of each task's single-task seeds, and a method's Δm is the mean
    (± std) over its seeds of each seed's Δm against that reference.
    """
    per_task = {t: _seeds(single[t]) for t in tasks}
    reference, ref_std = {}, {}
    for t in tasks:
        m, sd = _mean_metrics([e for e, _ in per_task[t]], lambda k, t=t: k.startswith(t + "/"))
        reference.update(m)
        ref_std.update(sd)
    used = primary_metrics(tasks, reference)
    # A partial table (--finished_only mid-experiment) may have more seeds of one task's
    # specialist than of another's: the row claims the fewest, and shows a std where a
    # task has one.
    ref_seeds = [len(v) for v in per_task.values()]
    rows = [Row(REFERENCE, reference, 0.0 if used else math.nan,
                1e3 * sum(statistics.fmean(s for _, s in per_task[t]) for t in tasks),
                metrics_std=ref_std if max(ref_seeds) > 1 else {}, seeds=min(ref_seeds))]
    for name, runs in multi.items():
        runs = _seeds(runs)
        evals = [e for e, _ in runs]
        means, stds = _mean_metrics(evals)
        dm, dm_std = (mean_std([delta_m(e, reference, used) for e in evals]) if used
                      else (math.nan, math.nan))
        rows.append(Row(name, means, dm, 1e3 * statistics.fmean(s for _, s in runs),
                        metrics_std=stds if len(runs) > 1 else {}, delta_m_std=dm_std,
                        seeds=len(runs)))
    base = next((r.step_ms for r in rows if r.method == BASE_STRATEGY), math.nan)
    for r in rows:
        r.time_vs_base = r.step_ms / base if base > 0 else math.nan
    keys = [f"{t}/{m}" for t in tasks for m in HIGHER_IS_BETTER
            if any(f"{t}/{m}" in r.metrics for r in rows)]
    return rows, keys, used


def notes(config, tasks: Sequence[str], steps: int, used: Mapping[str, bool],
          budget: str = "A", seeds: Sequence[int] = (), a_only: Sequence[str] = ()) -> str:
    """The Markdown text above the table: what was compared and how; ``a_only`` names the
    rows with another task mixture than the config's (budget A only)."""
    left_out = [t for t in tasks if not any(k.startswith(t + "/") for k in used)]
    sampled = [t for t in tasks
               if (config.tasks.get(t) or {}).get("objective", "diffusion") != "regression"]
    own = {t: (config.tasks.get(t) or {}).get("sample_steps") for t in sampled}
    steps_text = f"{config.eval.sample_steps} sampler step(s)" + "".join(
        f", {t} {n}" for t, n in own.items() if n)
    if budget == "A":
        budget_text = (
            f"**Budget A, equal steps per model**: every model trains {steps} steps at global "
            f"batch {config.batch_size}. A single-task model spends the whole batch on its "
            "task, so it sees about T x the examples of its task that the multi-task model "
            "does (which splits each batch among the tasks by their mixture weights), and the "
            "T specialists together cost T x its compute.")
    else:
        per_task = ", ".join(f"{t} {budget_b_steps(config, t, steps)}" for t in tasks)
        budget_text = (
            f"**Budget B, equal examples per task**: the multi-task models train {steps} steps "
            f"at global batch {config.batch_size}; each specialist trains as many steps as "
            f"its task's share of those batches ({per_task}), so it sees as many examples of "
            "its task and the T specialists together cost what one multi-task model costs.")
        if a_only:
            budget_text += (f" Not in this table: {', '.join(a_only)} (another task mixture, "
                            "which these specialists' steps do not follow; budget A only).")
    seed_text = ""
    if len(seeds) > 1:
        seed_text = (f" Seeds {', '.join(map(str, seeds))} (`seed`: initialisation, data "
                     "order, task assignment and evaluation noise) for the rows whose `seeds` "
                     "column says so, the first only for the others; a cell is the mean ± "
                     "sample std over seeds; each seed's Δm is taken against the mean of the "
                     "single-task seeds.")
    lines = [
        "# Δm: multi-task weighting strategies vs. single-task models",
        "",
        f"Tasks: {', '.join(tasks)}; dataset `{config.dataset.name}`. " + budget_text
        + seed_text + " `ew-w<W>`: an `ew` model of width W (the equal-parameter row).",
        "",
        "Δm (Maninis et al., 2019) = 100/T Σ_t (-1)^{l_t} (M_mtl,t − M_single,t) / M_single,t, "
        "l_t = 1 where lower is better; **Δm > 0 is better than single-task**. Metrics in Δm: "
        + (", ".join(f"`{k}` ({'higher' if h else 'lower'} is better)" for k, h in used.items())
           or "none") + "." + (f" Left out (no primary metric): {', '.join(left_out)}."
                               if left_out else ""),
        "",
        "Metrics: final evaluation of each run (EMA parameters, "
        f"{config.eval.num_batches} test batch(es) of {config.eval.batch_size} per task, "
        + (steps_text + " (regressions: one pass)" if sampled else
           "one forward pass per example: every task is a regression")
        + "). `step_ms`: median train-step time over the "
        "logged windows after the first; the single-task row sums its T models. "
        f"`step_time_vs_{BASE_STRATEGY}`: relative to the `{BASE_STRATEGY}` row.",
    ]
    return "\n".join(lines)


BUDGETS = ("A", "B")


def run_name(base: str, seed: int, first_seed: int) -> str:
    """A run's sub-workdir: ``base`` for the first seed (the one-seed layout of earlier
    tables, so their finished runs are reused), ``base_seed<s>`` for the others."""
    return base if seed == first_seed else f"{base}_seed{seed}"


def specialist_config(config, task: str, steps: int, t_steps: int
                      ) -> ml_collections.ConfigDict:
    """The single-task config of ``task`` for ``t_steps`` steps, its learning-rate warmup
    scaled by ``t_steps / steps`` (budget B): a specialist on a fraction of the steps runs
    the same schedule compressed, not the multi-task model's warmup over most of its run."""
    cfg = single_task_config(config, task, t_steps)
    if t_steps != steps:
        cfg.warmup_steps = max(1, round(config.warmup_steps * t_steps / steps))
    return cfg


def budget_b_steps(config, task: str, steps: int) -> int:
    """Budget B: a specialist sees as many examples of its task as the multi-task model
    (``steps`` x its share of each batch, i.e. steps / T with equal mixture weights), so
    the T specialists together cost what the one multi-task model costs."""
    return max(1, round(steps * task_shares(config)[task]))


def _same_shares(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[t], b[t], rel_tol=1e-9) for t in a)


def task_shares(config) -> dict[str, float]:
    """Each task's share of every multi-task batch: its mixture weight over the sum."""
    weights = {t: float((config.tasks.get(t) or {}).get("weight", 1.0))
               for t in task_names(config)}
    return {t: w / sum(weights.values()) for t, w in weights.items()}


def parse_rows(text: str) -> dict[str, tuple[str, dict]]:
    """Extra multi-task rows from 'NAME=STRATEGY[:KEY=VALUE...][;NAME=...]', e.g.
    'ew-film=ew:model.task_film=True;ew-w32=ew:model.width=32' -> {name: (strategy spec,
    {dotted config key: value})}; a value is a Python literal, else a string.

    Raises:
      ValueError: a row without a name or strategy, a repeated name, or a bad override.
    """
    import ast

    rows: dict[str, tuple[str, dict]] = {}
    for item in filter(None, (x.strip() for x in text.split(";"))):
        name, eq, rest = item.partition("=")
        parts = rest.split(":")
        if not eq or not name.strip() or not parts[0].strip():
            raise ValueError(f"--rows item {item!r}: use NAME=STRATEGY[:KEY=VALUE...], e.g. "
                             "ew-film=ew:model.task_film=True")
        overrides = {}
        for part in parts[1:]:
            key, eq, value = part.partition("=")
            if not eq or not key.strip():
                raise ValueError(f"--rows item {item!r}: {part!r} is not KEY=VALUE")
            try:
                overrides[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                overrides[key.strip()] = value.strip()
        if name.strip() in rows:
            raise ValueError(f"--rows names {name.strip()!r} twice")
        rows[name.strip()] = (parts[0].strip(), overrides)
    return rows


def with_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, object]
                   ) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted-key ``overrides``; a key the config lacks is refused
    (``update_from_flattened_dict`` would skip it silently)."""
    cfg = config.copy_and_resolve_references()
    for key in overrides:
        node = cfg
        for part in key.split("."):
            if not hasattr(node, "keys") or part not in node:
                raise ValueError(f"--rows: the config has no key {key!r}")
            node = node[part]
    try:
        cfg.update_from_flattened_dict(dict(overrides))
    except TypeError as e:
        raise ValueError(f"--rows: {e}") from e
    return cfg


def run_experiment(config: ml_collections.ConfigDict, workdir: str,
                   strategies: str | Sequence[str], *, steps: int | None = None,
                   seeds: Sequence[int] | None = None, seeded: Sequence[str] = (),
                   budgets: Sequence[str] = ("A",), equal_params_width: int | None = None,
                   rows: Mapping[str, tuple[str, dict]] | None = None,
                   train_fn: Callable | None = None, eval_fn: Callable | None = None,
                   finished_only: bool = False) -> dict[str, list[Row]]:
    """Trains or reuses every run, writes the tables; returns each budget's rows.

    Args:
      config: the base config (its task list, data, model, optimiser, eval settings).
      workdir: holds `single_<task>[_B][_seed<s>]/`, `mtl_<strategy>[_seed<s>]/` and the
        tables: `delta_m.md` / `.csv` (budget A), `delta_m_B.md` / `.csv` (budget B).
      strategies: 'ew,famo,...' or a sequence of names.
      steps: train steps of the multi-task models (default: config.num_train_steps).
      seeds: config seeds (default: config.seed only). The single-task models, the
        equal-parameter row and the strategies in ``seeded`` run every seed; the other
        strategies the first one (their rows say ``seeds`` = 1).
      seeded: strategies (of ``strategies``) that run every seed.
      budgets: 'A' (every specialist trains ``steps`` steps: K x the compute of the
        multi-task model) and/or 'B' (each trains ``budget_b_steps``: equal examples per
        task, equal total compute).
      equal_params_width: adds the row ``ew-w<W>``: one `ew` model of width W (as many
        parameters as the specialists together, e.g. 32 against four width-16 models).
      rows: extra multi-task rows, {name: (strategy spec, {dotted config key: value})}
        (``parse_rows``), e.g. per-task capacity; each trains every seed.
      train_fn: (config, workdir) -> anything; default `train.train_and_evaluate`.
      eval_fn: (workdir, step=) -> anything; default `cli.eval_workdir`.
      finished_only: train and evaluate nothing: the tables and pictures of the runs
        that have finished (a row's `seeds` column counts its finished seeds), e.g. while
        the experiment is interrupted between sessions.

    Raises:
      ValueError: a bad strategy, hyperparameter, seed list, budget or task list, before
        anything trains.
    """
    tasks = task_names(config)
    if len(tasks) < 2:
        raise ValueError(f"tasks.names={config.tasks.names!r}: Δm needs at least two tasks")
    names = parse_strategies(strategies, config)
    steps = int(steps or config.num_train_steps)
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    seeds = tuple(dict.fromkeys(int(x) for x in (seeds or (config.seed,))))
    unknown = sorted(set(seeded) - set(names))
    if unknown:
        raise ValueError(f"--seeded names {unknown[0]!r}, which is not in --strategies "
                         f"({', '.join(names)})")
    budgets = tuple(dict.fromkeys(b.strip().upper() for b in budgets if b.strip()))
    if not budgets or set(budgets) - set(BUDGETS):
        raise ValueError(f"budgets={budgets}: use A (equal steps per model) and/or B (equal "
                         "examples per task, equal total compute)")
    if equal_params_width is not None and equal_params_width < 1:
        raise ValueError(f"equal_params_width={equal_params_width} must be >= 1")
    if equal_params_width is not None:  # a row like any other: ew at another width
        rows = {f"ew-w{equal_params_width}": ("ew", {"model.width": int(equal_params_width)}),
                **(rows or {})}
    extra = {}
    for name, (spec, overrides) in (rows or {}).items():
        if name in names or name == REFERENCE:
            raise ValueError(f"--rows name {name!r} is already a row; pick another")
        parse_strategies(spec, config)
        extra[name] = with_overrides(multi_task_config(config, spec, steps), overrides)
    # Budget B sizes each specialist by the config's task mixture; a row with another
    # mixture has no specialists of its own there, so it is compared under budget A only.
    a_only = sorted(name for name, cfg in extra.items()
                    if not _same_shares(task_shares(cfg), task_shares(config)))
    if train_fn is None:
        from mtlgen_jax.train import train_and_evaluate as train_fn
    if eval_fn is None:
        from mtlgen_jax.cli import eval_workdir as eval_fn

    def with_seed(cfg, seed):
        cfg = cfg.copy_and_resolve_references()
        cfg.seed = seed
        return cfg

    first = seeds[0]
    plan = []  # (table key, method or task, sub-workdir, config)
    for b in budgets:
        for t in tasks:
            t_steps = steps if b == "A" else budget_b_steps(config, t, steps)
            base = f"single_{t}" if b == "A" else f"single_{t}_B"
            plan += [(f"single_{b}", t, run_name(base, s, first),
                      with_seed(specialist_config(config, t, steps, t_steps), s))
                     for s in seeds]
    for spec in names:
        spec_seeds = seeds if spec in seeded else seeds[:1]
        plan += [("multi", spec, run_name(f"mtl_{spec}", s, first),
                  with_seed(multi_task_config(config, spec, steps), s)) for s in spec_seeds]
    for method, cfg in extra.items():
        plan += [("multi", method, run_name(f"mtl_{method}", s, first), with_seed(cfg, s))
                 for s in seeds]
    found: dict[str, dict[str, list]] = {}
    paths: dict[tuple[str, str], list[str]] = {}
    for table, key, sub, cfg in plan:
        path = os.path.join(workdir, sub)
        if finished_only:
            results = final_eval(path, cfg.num_train_steps)
            if results is None or not has_checkpoint(path, cfg.num_train_steps):
                logging.info("not finished, left out: %s", path)
                continue
        else:
            results = ensure_run(cfg, path, train_fn=train_fn, eval_fn=eval_fn)
        found.setdefault(table, {}).setdefault(key, []).append(
            (results, step_seconds(path, cfg.batch_size)))
        paths.setdefault((table, key), []).append(path)
    out = {}
    for b in budgets:
        missing = [t for t in tasks if t not in found.get(f"single_{b}", {})]
        if missing:
            raise RuntimeError(f"budget {b}: no finished single-task run of {missing[0]} to "
                               "compare with; run without --finished_only to train it")
        multi = {k: v for k, v in found.get("multi", {}).items()
                 if b == "A" or k not in a_only}
        table, keys, used = build_rows(tasks, found[f"single_{b}"], multi)
        write_tables(workdir, table, keys, notes(config, tasks, steps, used, budget=b,
                                                 seeds=seeds, a_only=a_only),
                     name="delta_m" if b == "A" else f"delta_m_{b}")
        out[b] = table
    write_plots(workdir, config, tasks, steps, out, paths)
    return out


def write_plots(workdir: str, config, tasks: Sequence[str], steps: int,
                rows_by_budget: Mapping, paths: Mapping[tuple[str, str], Sequence[str]]
                ) -> None:
    """`delta_m_tradeoff.png` (Δm against step time) and `delta_m_curves.png` (per-task
    PSNR against the task's images seen: the specialists of the first budget, `ew`, the
    best other multi-task row of that budget by Δm, and the equal-parameter row)."""
    from mtlgen_jax.experiments import delta_m_plots

    delta_m_plots.tradeoff(rows_by_budget, os.path.join(workdir, "delta_m_tradeoff.png"),
                           reference=REFERENCE, base=BASE_STRATEGY)
    budget = next(iter(rows_by_budget))
    rows = [r for r in rows_by_budget[budget] if r.method != REFERENCE]
    shares = task_shares(config)
    batch = float(config.batch_size)
    single_steps = {t: steps if budget == "A" else budget_b_steps(config, t, steps)
                    for t in tasks}
    series = {f"single-task ({budget})": {t: (paths[(f"single_{budget}", t)], batch,
                                              single_steps[t]) for t in tasks}}
    ranked = sorted((r for r in rows if math.isfinite(r.delta_m)), key=lambda r: -r.delta_m)
    picks = [BASE_STRATEGY] + [r.method for r in ranked if r.method != BASE_STRATEGY][:1]
    picks += [r.method for r in rows if r.method.startswith(f"{BASE_STRATEGY}-w")]
    for m in dict.fromkeys(picks):
        if ("multi", m) in paths:
            series[m] = {t: (paths[("multi", m)], batch * shares[t], steps) for t in tasks}
    delta_m_plots.curves(tasks, series, os.path.join(workdir, "delta_m_curves.png"))


def main(argv: Sequence[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        parse_strategies(f.strategies, f.config)  # refuse bad names before anything runs
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")  # tf.data must not take accelerator memory
    from mtlgen_jax import cpu_devices

    cpu_devices.configure(f.config)  # CPU hosts: two JAX devices per core (see the module)
    seeds = [int(x) for x in f.seeds.split(",") if x.strip()] if f.seeds else None
    seeded = [x.strip() for x in f.seeded.split(",") if x.strip()]
    try:
        out = run_experiment(f.config, f.workdir, f.strategies, steps=f.steps, seeds=seeds,
                             seeded=seeded, budgets=f.budgets.split(","),
                             equal_params_width=f.equal_params_width,
                             rows=parse_rows(f.rows), finished_only=f.finished_only)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    for b in out:
        path = os.path.join(f.workdir, "delta_m.md" if b == "A" else f"delta_m_{b}.md")
        with open(path) as fh:
            print(fh.read())
        print(f"wrote {path} and its .csv")


def _cli() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Holds single_<task>/, mtl_<strategy>/ and the tables.")
    flags.DEFINE_string("strategies", None, "Comma-separated weighting strategies, e.g. "
                        "ew,uw,famo,pcgrad (see mtlgen_jax.weighting.NAMES).")
    flags.DEFINE_integer("steps", None, "Train steps of every model (default: the config's "
                         "num_train_steps).")
    flags.DEFINE_string("seeds", None, "Comma-separated config seeds, e.g. 0,1,2 (default: "
                        "the config's seed). Single-task models and the equal-parameter row "
                        "run every seed; strategies only if named in --seeded.")
    flags.DEFINE_string("seeded", "", "Strategies that run every seed, e.g. ew,famo.")
    flags.DEFINE_string("budgets", "A", "A (equal steps per model) and/or B (equal examples "
                        "per task = equal total compute), e.g. A,B.")
    flags.DEFINE_integer("equal_params_width", None, "Adds an ew model of this width (as many "
                         "parameters as the specialists together).")
    flags.DEFINE_string("rows", "", "Extra multi-task rows, every seed: "
                        "'NAME=STRATEGY[:KEY=VALUE...][;...]', e.g. "
                        "'ew-film=ew:model.task_film=True;ew-lora4=ew:model.task_lora_rank=4'.")
    flags.DEFINE_bool("finished_only", False, "Train nothing: write the tables and pictures "
                      "of the runs that have finished.")
    flags.mark_flags_as_required(["config", "workdir", "strategies"])
    app.run(main)


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    _cli()
