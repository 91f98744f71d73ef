"""Checkpoints: orbax ``CheckpointManager`` in ``<workdir>/checkpoints``.

A checkpoint holds the whole :class:`~mtlgen_jax.step.TrainState` (params,
optimizer state, EMA params, weighting-strategy state, step, rng) and a small
JSON ``meta`` item: the input pipeline's position (batches consumed), the
global batch size and the package version. The run's config is saved as
``<workdir>/config.json`` beside it. Saves are asynchronous and atomic (orbax
writes to a temporary directory and renames it when complete).
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
from absl import logging

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1


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
        """Starts saving ``state`` at ``step`` (asynchronously). Returns whether it saved."""
        meta = dict(meta, format_version=FORMAT_VERSION, step=int(step))
        return self.manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                    meta=ocp.args.JsonSave(meta)),
            force=force,
        )

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
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                    meta=ocp.args.JsonRestore()),
        )
        return restored.state, dict(restored.meta)

    def restore_meta(self, step: int) -> dict:
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored.meta)

    def reached_preemption(self, step: int) -> bool:
        """Whether the cluster signalled preemption at ``step`` (orbax's sync point: every
        process answers alike; False where JAX runs no preemption service, e.g. one
        process). Errors propagate: a silent False would switch preemption saves off."""
        return bool(self.manager.reached_preemption(step))

    def wait(self) -> None:
        """Blocks until background saves are written (and raises their errors)."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
