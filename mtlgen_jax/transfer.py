"""Starting a run from another run's parameters (``--config.init_from=WORKDIR``).

A new run (a new task, a new mixture) starts from the EMA parameters of a trained
run instead of a random initialisation: the shared backbone, and the heads of the
tasks both runs have; the backbone's task-embedding table is copied row by row for
those tasks (a row is a task's identity in the backbone), and the new tasks' heads and
rows stay freshly initialised. The backbone's per-task tables (``model.task_film``,
``model.task_lora_rank``; ``models/capacity.py``) are copied the same way, row by row;
a source without them (an older run, or one with the options off) leaves them at their
initial value, the identity, so the new run starts as the source's function.
``init_from_freeze='backbone'`` keeps the shared backbone fixed (its updates are
zeroed, so it stays bitwise equal to the source's; a new task's embedding row keeps its
random initial value, a fixed code for the task) and trains the heads and the per-task
tables -- a probe of the source's features, in the transfer literature's terms (with
adapters: LoRA fine-tuning of a frozen backbone).
The optimizer state's layout depends on the setting: resume a run with the
``init_from_freeze`` it was started with.

Only a fresh run is initialised this way: a workdir that already holds checkpoints
resumes from them, whatever ``init_from`` says.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from mtlgen_jax.models import capacity

TASK_EMBED = ("backbone", "task_embed", "embedding")  # [num_tasks, D] rows by task id
FREEZE = ("", "backbone")


def check_config(config) -> None:
    """Refuses a bad ``init_from_freeze`` (``components.build``: before anything compiles)."""
    if config.init_from_freeze not in FREEZE:
        raise ValueError(f"init_from_freeze={config.init_from_freeze!r}: use '' (train "
                         "everything) or 'backbone' (train only the heads).")
    if config.init_from_freeze and not config.init_from:
        raise ValueError("init_from_freeze='backbone' needs --config.init_from=WORKDIR of a "
                         "trained run.")


def check_source(workdir: str) -> None:
    """Refuses an ``init_from`` that is not a trained run (a fresh run, before compiling)."""
    import os

    from mtlgen_jax import checkpoint

    if not os.path.exists(os.path.join(workdir, "config.json")):
        raise ValueError(f"--config.init_from={workdir}: not a run directory (no config.json); "
                         "name the --workdir of a trained run.")
    if not checkpoint.complete_steps(workdir):
        raise ValueError(f"--config.init_from={workdir} holds no checkpoint; train it first.")


def _path(keys) -> tuple[str, ...]:
    return tuple(getattr(k, "key", str(k)) for k in keys)


def merge(fresh: Any, source: Any, *, tasks: tuple[str, ...],
          source_tasks: tuple[str, ...]) -> tuple[Any, dict[str, list[str]]]:
    """``fresh`` params with every part ``source`` has for them copied in.

    Args:
      fresh: this run's freshly initialised params (host arrays).
      source: the source run's params.
      tasks, source_tasks: the task names of each run, in task-id order.

    Returns:
      (params, report): report['copied'], ['fresh'] list the parameter paths.

    Raises:
      ValueError: a shared backbone parameter (or a shared task's head parameter)
        missing from the source, or a parameter of another shape, naming the parameter
        and both shapes.
    """
    src = {_path(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(source)[0]}
    report = {"copied": [], "fresh": []}

    def take(keys, value):
        path = _path(keys)
        name = "/".join(path)
        head = path[0][len("head_"):] if path[0].startswith("head_") else None
        per_task = capacity.is_per_task(path)
        if (head is not None and head not in source_tasks) or (per_task and path not in src):
            report["fresh"].append(name)
            return value
        if path not in src:
            raise ValueError(f"init_from: the source run has no parameter {name}; its model "
                             "differs (model.* must match the source run's).")
        old = src[path]
        if (path == TASK_EMBED or per_task) and old.shape[1:] == np.shape(value)[1:]:
            out = np.array(value)  # rows of the tasks both runs have; new tasks' stay fresh
            for i, task in enumerate(tasks):
                if task in source_tasks:
                    out[i] = old[source_tasks.index(task)]
            report["copied"].append(name)
            return out
        if old.shape != np.shape(value):
            raise ValueError(f"init_from: parameter {name} has shape {old.shape} in the source "
                             f"run and {np.shape(value)} here; model.* (and the dataset's "
                             "channels) must match the source run's.")
        report["copied"].append(name)
        return old.astype(np.asarray(value).dtype)

    return jax.tree_util.tree_map_with_path(take, fresh), report


def freeze(optimizer: optax.GradientTransformation, what: str) -> optax.GradientTransformation:
    """``optimizer`` with the updates of ``what`` ('backbone': its shared parameters, not
    its per-task tables) zeroed; '' = unchanged."""
    if not what:
        return optimizer

    def frozen(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: _path(path)[0] == what and not capacity.is_per_task(path), params)

    return optax.chain(optimizer, optax.masked(optax.set_to_zero(), frozen))


def load(workdir: str) -> tuple[Any, tuple[str, ...]]:
    """The EMA parameters of run ``workdir``'s latest checkpoint (host arrays) and its
    task names."""
    from mtlgen_jax import api

    run = api.restore(workdir)
    return jax.device_get(run.params), tuple(run.comp.task_names)
