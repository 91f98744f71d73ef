"""Checkpoints: orbax ``CheckpointManager`` in ``<workdir>/checkpoints``.

A checkpoint holds the whole :class:`~mtlgen_jax.step.TrainState` (params,
optimizer state, EMA params, weighting-strategy state, step, rng) and a small
JSON ``meta`` item: the input pipeline's position (batches consumed), the
global batch size and the package version. The run's config is saved as
``<workdir>/config.json`` beside it. Saves are asynchronous and atomic (orbax
writes to a temporary directory and renames it when complete).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from typing import Any

import orbax.checkpoint as ocp
from absl import logging

CHECKPOINT_DIR = "checkpoints"
SET_ASIDE_DIR = "checkpoints_set_aside"  # later checkpoints moved away by resume_step
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or written; the message says what to do."""


def complete_steps(workdir: str) -> list[int]:
    """The steps of the complete checkpoints in ``workdir`` (read from the directory)."""
    directory = os.path.join(workdir, CHECKPOINT_DIR)
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n) for n in names if n.isdigit())


def set_aside_after(workdir: str, step: int, *, move: bool = True) -> list[int]:
    """Resuming from ``step`` (``--config.resume_step``): moves the checkpoints of later
    steps to ``<workdir>/checkpoints_set_aside/`` -- never deletes them -- so that the
    run continues from ``step``. Returns the later steps. ``move=False`` only checks
    (the processes of a multi-host run other than the one that moves).

    Raises:
      ValueError: no complete checkpoint at ``step``.
    """
    steps = complete_steps(workdir)
    if step not in steps:
        raise ValueError(f"--config.resume_step={step}: {workdir} has no checkpoint at step "
                         f"{step}; steps present: {steps}.")
    later = [s for s in steps if s > step]
    if later and move:
        target = os.path.join(workdir, SET_ASIDE_DIR)
        os.makedirs(target, exist_ok=True)
        for s in later:
            dest, n = os.path.join(target, str(s)), 1
            while os.path.exists(dest):
                dest, n = os.path.join(target, f"{s}.{n}"), n + 1
            shutil.move(os.path.join(workdir, CHECKPOINT_DIR, str(s)), dest)
        logging.warning("resume_step=%d: moved the later checkpoint(s) %s to %s (kept, not "
                        "deleted).", step, later, target)
    return later


def _unreadable(directory: str, step: int, steps: list[int], error: BaseException
                ) -> CheckpointError:
    """The error for a checkpoint that failed to restore: the step, the file, the way on."""
    text = str(error)
    found = re.findall(r"""["'](/[^"']+)["']""", text)  # the most specific path named
    where = getattr(error, "filename", None) or (max(found, key=len) if found else
                                                 os.path.join(directory, str(step)))
    reason = next((line.strip() for line in text.splitlines() if line.strip()),
                  type(error).__name__)
    earlier = [s for s in steps if s < step]
    advice = (f"resume from the previous checkpoint with --config.resume_step={earlier[-1]}"
              if earlier else f"there is no earlier checkpoint: move {directory}/{step} "
              "aside to start afresh")
    return CheckpointError(
        f"the checkpoint at step {step} cannot be read: {where}: {reason[:300]}. It was left "
        f"as it is; {advice} (steps present: {steps}).")


class Checkpointer:
    """Saves and restores train states of one workdir.

    Args:
      workdir: the run directory.
      every: save every this many steps (``save`` is a no-op otherwise unless forced).
      keep: how many recent checkpoints to keep.
      async_save: write in a background thread (the train loop goes on).
      read_only: a reader (a notebook, ``--mode eval``): never writes, deletes or cleans
        up -- a live trainer's save in flight (``*.orbax-checkpoint-tmp``) looks exactly
        like a partial checkpoint, and a reader that removed it killed the save
        (``bench/async_save_stress.py --reader cleanup``).
    """

    def __init__(self, workdir: str, *, every: int = 1, keep: int = 3, async_save: bool = True,
                 read_only: bool = False):
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        partial = sorted(n for n in (os.listdir(self.directory) if os.path.isdir(self.directory)
                                     else []) if ".orbax-checkpoint-tmp" in n)
        if partial and not read_only:
            logging.warning("removing %d partial checkpoint(s) left by an interrupted save "
                            "(%s); resuming from the latest complete one.", len(partial),
                            ", ".join(partial))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, every),
            max_to_keep=keep,
            enable_async_checkpointing=async_save and not read_only,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options,
                                             item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict, *, force: bool = False) -> bool:
        """Starts saving ``state`` at ``step`` (asynchronously). Returns whether it saved.
        A failure of this save or of the previous background one raises CheckpointError."""
        meta = dict(meta, format_version=FORMAT_VERSION, step=int(step))
        try:
            return self.manager.save(
                int(step),
                args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)),
                force=force,
            )
        except Exception as e:  # noqa: BLE001 -- a write error, here or from the last save
            raise self._save_failed(e) from e

    def restore(self, step: int | None, abstract_state: Any) -> tuple[Any, dict]:
        """Restores (state, meta) at ``step`` (latest if None) into ``abstract_state``'s layout."""
        if step is None:
            step = self.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint at step {step} in {self.directory}; "
                f"steps present: {self.all_steps()}"
            )
        logging.info("restoring checkpoint at step %d from %s", step, self.directory)
        restored = self._restore(step, ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
        return restored.state, dict(restored.meta)

    def restore_meta(self, step: int) -> dict:
        return dict(self._restore(step, ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)

    def _restore(self, step: int, args):
        """``manager.restore`` with an unreadable checkpoint reported as a CheckpointError
        that names the step and the file (never a fallback to another step)."""
        try:
            return self.manager.restore(step, args=args)
        except Exception as e:  # noqa: BLE001 -- TensorStore/orbax raise many kinds
            raise _unreadable(self.directory, step, self.all_steps(), e) from e

    def reached_preemption(self, step: int) -> bool:
        """Whether the cluster signalled preemption at ``step`` (orbax's sync point: every
        process answers alike; False where JAX runs no preemption service, e.g. one
        process). Errors propagate: a silent False would switch preemption saves off."""
        return bool(self.manager.reached_preemption(step))

    def wait(self) -> None:
        """Blocks until background saves are written; a failed save raises a
        CheckpointError that says which checkpoints are intact."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001 -- from orbax's background threads
            raise self._save_failed(e) from e

    def _save_failed(self, error: BaseException) -> CheckpointError:
        steps = complete_steps(os.path.dirname(self.directory))
        full = isinstance(error, OSError) and error.errno == errno.ENOSPC
        cause = ("the disk is full" if full else
                 "the checkpoint directory cannot be written" if isinstance(error, OSError)
                 else "the save failed")
        return CheckpointError(
            f"saving a checkpoint in {self.directory} failed: {cause} ({error}). The run "
            f"stopped; the earlier checkpoints (steps {steps}) are intact. "
            + ("Free some space" if full else "Fix the directory")
            + " and run the same command again to resume from step "
            + (f"{steps[-1]}." if steps else "0."))

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()
