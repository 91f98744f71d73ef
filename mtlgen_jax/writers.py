"""Where metrics go: ``metrics.jsonl`` (appended, never rewritten) and TensorBoard.

Only process 0 writes; on other processes the writer does nothing. A run killed
mid-write leaves a torn last line: the next writer cuts it off when it opens the
file, and readers skip it. A resumed run logs the steps between its checkpoint and
the kill again; :func:`read_metrics` keeps the last record of each step.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from absl import logging


class MetricWriter:
    """Appends one JSON object per call to ``metrics.jsonl`` and writes TensorBoard scalars."""

    def __init__(self, workdir: str, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            _cut_torn_line(self.path)
            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: float(v) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        for k, v in scalars.items():
            self._tb.add_scalar(k, float(v), int(step))
        self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _cut_torn_line(path: str) -> None:
    """Truncates ``path`` after its last newline (a line torn by a kill mid-write)."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            f.truncate(keep)
            logging.warning("%s: cut a torn last line (%d bytes) left by an interrupted "
                            "write.", path, len(data) - keep)


def read_metrics(workdir: str, *, latest: bool = True) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``, in order of their first step.

    Args:
      workdir: the run directory.
      latest: keep only the last record of each step and kind (training log or
        evaluation): a resumed run's records replace those its killed predecessor wrote
        after the checkpoint it resumed from. False: every row, as written.

    A torn last line (a write cut short) is skipped.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # torn last line: the writer was cut off
                continue
            raise ValueError(f"{path}, line {i + 1}: not JSON: {line[:80]!r}") from None
    if not latest:
        return rows
    last: dict[tuple, dict] = {}
    for row in rows:
        key = (row.get("step"), any(k.startswith("eval/") for k in row))
        last.pop(key, None)  # re-insert: the order follows the latest write
        last[key] = row
    return sorted(last.values(), key=lambda r: r.get("step", -1))
