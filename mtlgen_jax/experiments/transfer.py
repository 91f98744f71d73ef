r"""Transfer to a new task: how many steps a pretrained backbone saves.

    python -m mtlgen_jax.experiments.transfer --config configs/default.py \
        --workdir runs/transfer [--task colorize] [--eval_every 250] [--config.KEY=VALUE]

Three runs of the config (resumable, each in `<workdir>/<name>`):

* `source`: every task of the config except `--task` (the full step budget);
* `scratch`: `--task` alone, from a random initialisation;
* `transfer`: `--task` alone, from `source`'s EMA parameters (`init_from`; the new
  task's head and embedding row fresh, everything trained).

Both single-task runs evaluate `--task`'s primary metric (PSNR for the restoration
tasks) every `--eval_every` steps. The result (`<workdir>/transfer.json` and `.md`):
the scratch run's final value, and the first evaluated step at which the transfer run
reaches it -- as a fraction of the scratch run's steps (the target: <= 1/3).
"""

from __future__ import annotations

import json
import os

import ml_collections
from absl import logging

from mtlgen_jax import tasks as tasks_lib
from mtlgen_jax import writers
from mtlgen_jax.experiments import delta_m


def run_configs(config: ml_collections.ConfigDict, task: str, eval_every: int
                ) -> dict[str, ml_collections.ConfigDict]:
    """The three runs' configs."""
    names = delta_m.task_names(config)
    if task not in names or len(names) < 2:
        raise ValueError(f"--task={task} must be one of the config's tasks {names}, and the "
                         "config needs at least one other task to pretrain on.")
    out = {}
    for name in ("source", "scratch", "transfer"):
        cfg = config.copy_and_resolve_references()
        cfg.unlock()
        cfg.tasks.names = ",".join(t for t in names if t != task) if name == "source" else task
        if name != "source":
            cfg.eval_every_steps = eval_every
            cfg.eval.num_batches_during_training = cfg.eval.num_batches
        out[name] = cfg
    return out


def curve(workdir: str, task: str) -> list[tuple[int, float]]:
    """(step, primary metric of ``task``) of every evaluation in a run's metrics.jsonl."""
    key = f"eval/{task}/{tasks_lib.get_class(task).metrics[0]}"
    return sorted((r["step"], r[key]) for r in writers.read_metrics(workdir) if key in r)


def steps_to_reach(points: list[tuple[int, float]], target: float) -> int | None:
    """The first evaluated step whose value is >= ``target`` (higher is better), or None."""
    return next((s for s, v in points if v >= target), None)


def run_experiment(config, workdir: str, task: str, eval_every: int) -> dict:
    from mtlgen_jax.cli import eval_workdir
    from mtlgen_jax.train import train_and_evaluate

    cfgs = run_configs(config, task, eval_every)
    dirs = {name: os.path.join(workdir, name) for name in cfgs}
    delta_m.ensure_run(cfgs["source"], dirs["source"], train_fn=train_and_evaluate,
                       eval_fn=eval_workdir)
    cfgs["transfer"].init_from = os.path.abspath(dirs["source"])
    for name in ("scratch", "transfer"):
        delta_m.ensure_run(cfgs[name], dirs[name], train_fn=train_and_evaluate,
                           eval_fn=eval_workdir)
    scratch, transfer = curve(dirs["scratch"], task), curve(dirs["transfer"], task)
    target = scratch[-1][1]
    reach = steps_to_reach(transfer, target)
    total = cfgs["scratch"].num_train_steps
    out = {"task": task, "metric": tasks_lib.get_class(task).metrics[0],
           "scratch_final": target, "transfer_final": transfer[-1][1],
           "steps": total, "transfer_steps_to_scratch_final": reach,
           "fraction": None if reach is None else reach / total,
           "scratch_curve": scratch, "transfer_curve": transfer}
    with open(os.path.join(workdir, "transfer.json"), "w") as f:
        json.dump(out, f, indent=1)
    with open(os.path.join(workdir, "transfer.md"), "w") as f:
        f.write(format_markdown(out) + "\n")
    logging.info("%s", format_markdown(out))
    return out


def format_markdown(out: dict) -> str:
    lines = ["| step | scratch | from the other tasks' model |", "|---:|---:|---:|"]
    transfer = dict(out["transfer_curve"])
    for step, value in out["scratch_curve"]:
        t = transfer.get(step)
        lines.append(f"| {step} | {value:.3f} | {'' if t is None else f'{t:.3f}'} |")
    reach = out["transfer_steps_to_scratch_final"]
    lines.append("")
    lines.append(f"{out['task']} {out['metric']}: scratch reaches {out['scratch_final']:.3f} "
                 f"after {out['steps']} steps; the transferred run "
                 + (f"reaches it at step {reach} ({out['fraction']:.2f} of the steps)."
                    if reach is not None else "does not reach it."))
    return "\n".join(lines)


def main(argv) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    from mtlgen_jax import cpu_devices

    cpu_devices.configure(f.config)
    out = run_experiment(f.config, f.workdir, f.task, f.eval_every)
    print(format_markdown(out))


def _cli() -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "A configs/*.py file.", lock_config=True)
    flags.DEFINE_string("workdir", None, "Holds the three runs and the result.")
    flags.DEFINE_string("task", "colorize", "The new task.")
    flags.DEFINE_integer("eval_every", 250, "Evaluate the single-task runs every N steps.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    _cli()
