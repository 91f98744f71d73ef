"""The run directory: checks that it can be written, and that a resumed run fits it."""

from __future__ import annotations

import json
import os

import ml_collections

CONFIG_FILE = "config.json"
# Config keys that change the shapes in a checkpoint: resuming with other values
# would fail deep inside orbax, so it is refused up front.
SHAPE_KEYS = ("model", "dataset.image_size", "dataset.name", "tasks.names", "weighting.name",
              "dtype")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def check_writable(workdir: str) -> None:
    """Creates ``workdir``, or raises a clear error if it cannot be created or written."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--workdir={workdir} cannot be created ({e.strerror}); "
                         "choose a directory you can write to.") from e
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ValueError(f"--workdir={workdir} is not writable; choose a directory you can "
                         "write to, or fix its permissions.")


def prepare(workdir: str, config: ml_collections.ConfigDict, *, has_checkpoint: bool,
            write: bool) -> None:
    """Refuses an incompatible resume and saves the config (after ``check_writable``).

    Args:
      workdir: the run directory.
      config: the run's config.
      has_checkpoint: whether ``workdir`` already holds checkpoints (a resume).
      write: whether this process writes files (process 0).
    """
    path = os.path.join(workdir, CONFIG_FILE)
    new = json.loads(config.to_json())  # same types as the saved file (tuples -> lists)
    if has_checkpoint and os.path.exists(path):
        with open(path) as f:
            old = with_added_keys(json.load(f))  # keys added since: their old behaviour
        changed = [k for k in SHAPE_KEYS if _get(old, k) != _get(new, k)]
        if changed:
            diffs = "; ".join(f"{k}: {_get(old, k)!r} -> {_get(new, k)!r}" for k in changed)
            raise ValueError(
                f"--workdir={workdir} holds a run with a different model or data ({diffs}); "
                "its checkpoints cannot be resumed with this config. Use a new --workdir, "
                "or the workdir's own config.json."
            )
    if write:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(config.to_json(indent=2, sort_keys=True))
        os.replace(tmp, path)


# Config keys added after the first release, with the value that reproduces the
# behaviour of runs saved before them. `load_config` fills in the missing ones, so
# an old workdir still restores, evaluates and resumes. Add every new key here.
ADDED_KEYS = {
    "grad_accum_steps": 1,
    "async_checkpoints": True,
    "adam_eps": 1e-8,
    "nonfinite.policy": "halt",
    "nonfinite.max_consecutive_skips": 5,
    "debug.step_delay_s": 0.0,
    "weighting.hparams": "",
    "weighting.grad_space": "params",
    "parallel.cpu_devices": 0,
    "tasks.denoise.residual": False,
    "tasks.inpaint.residual": False,
    "tasks.super_resolve.residual": False,
    "tasks.colorize.residual": False,
    # None: each task's consistent_default, what it did before the option existed.
    "tasks.inpaint.consistent": None,
    "tasks.super_resolve.consistent": None,
    "tasks.colorize.consistent": None,
    "tasks.denoise.loss": "l2",
    "tasks.inpaint.loss": "l2",
    "tasks.super_resolve.loss": "l2",
    "tasks.colorize.loss": "l2",
    "resume_step": None,
    "init_from": "",
    "init_from_freeze": "",
    # The transformer backbone (model.backbone='vit'): runs before it are U-Nets with
    # one-layer heads. The vit-only keys take configs/default.py's values, so an old
    # run's model section equals the default config's when a resume compares them.
    "model.backbone": "unet",
    "model.head_depth": 0,
    "model.patch_size": 2,
    "model.depth": 6,
    "model.mlp_ratio": 4.0,
    "model.attention_impl": None,
    # Per-task capacity inside the backbone: runs before it had none.
    "model.task_film": False,
    "model.task_lora_rank": 0,
    "eval.self_ensemble": False,
    "tasks.inpaint.fill": "harmonic",
    "dataset.augment": "none",
    "dataset.augment_contrast": 1.0,
    # Bridge and step-count keys the default's tasks gained (each task's own default).
    "tasks.super_resolve.bridge_noise": 0.2,
    "tasks.super_resolve.endpoint_fraction": 0.0,
    "tasks.super_resolve.sample_steps": None,
    "tasks.colorize.sample_steps": None,
    # The relative loss's floor (None: RELATIVE_LOSS_EPS, what runs before it used).
    "tasks.denoise.relative_floor_db": None,
    "tasks.inpaint.relative_floor_db": None,
    "tasks.super_resolve.relative_floor_db": None,
    "tasks.colorize.relative_floor_db": None,
}


def with_added_keys(saved: dict) -> dict:
    """``saved`` (a config as a dict) with every missing key of ADDED_KEYS filled in."""
    out = json.loads(json.dumps(saved))
    for dotted, value in ADDED_KEYS.items():
        *parents, leaf = dotted.split(".")
        d = out
        for part in parents:
            d = d.setdefault(part, {})
        d.setdefault(leaf, value)
    return out


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run saved in its workdir (keys added since then: their defaults)."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a mtlgen_jax run "
                                "directory (no config.json).")
    with open(path) as f:
        return ml_collections.ConfigDict(with_added_keys(json.load(f)))


# What may change after training: where the data comes from and how a run is evaluated
# and sampled. Everything else (model, tasks, objectives, image_size, channels, ...)
# fixes the checkpoint's meaning.
INFERENCE_KEYS = (
    "dataset.name", "dataset.folder", "dataset.data_dir", "dataset.train_split",
    "dataset.test_split", "dataset.test_fraction", "eval.batch_size", "eval.num_batches",
    "eval.sample_steps", "eval.guidance", "eval.self_ensemble", "diffusion.sampler",
    "diffusion.eta",
)
# ... and, per task, ``tasks.<task>.<key>`` for these.
INFERENCE_TASK_KEYS = ("sample_steps",)


def _task_key(config, key: str) -> tuple[str, str] | None:
    """(task, parameter) for a ``tasks.<task>.<INFERENCE_TASK_KEYS>`` key of a task of this
    run; else None."""
    parts = key.split(".")
    names = [t for t in str(config.tasks.names).split(",") if t]
    if len(parts) == 3 and parts[0] == "tasks" and parts[2] in INFERENCE_TASK_KEYS:
        return (parts[1], parts[2]) if parts[1] in names else None
    return None


def apply_inference_overrides(config: ml_collections.ConfigDict, overrides: dict,
                              *, mode: str) -> ml_collections.ConfigDict:
    """A copy of a run's ``config`` with command-line ``overrides`` ({dotted key: value}) of
    ``INFERENCE_KEYS`` applied; any other key is refused, naming it.

    Raises:
      ValueError: an override of a key that cannot change after training.
    """
    refused = sorted(k for k in overrides
                     if k not in INFERENCE_KEYS and _task_key(config, k) is None)
    if refused:
        raise ValueError(
            f"--config.{refused[0]} cannot change after training: --mode {mode} uses the "
            f"workdir's config.json. Only these apply on top of it: "
            f"{', '.join(INFERENCE_KEYS)}, and tasks.<task>.{{"
            f"{','.join(INFERENCE_TASK_KEYS)}}} for a task of the run.")
    out = config.copy_and_resolve_references()
    out.unlock()
    out.update_from_flattened_dict({k: v for k, v in overrides.items() if k in INFERENCE_KEYS})
    for k, v in overrides.items():
        if k not in INFERENCE_KEYS:
            task, key = _task_key(config, k)
            out.tasks[task] = dict(out.tasks.get(task) or {}, **{key: v})
    return out
