"""Tasks: one file each. A task turns clean images into its condition on device.

Adding a task: write ``tasks/<name>.py`` with a :class:`Task` subclass decorated
with :func:`register`, import it below, and name it in ``config.tasks.names``.
"""

from __future__ import annotations

from mtlgen_jax.tasks import colorize, denoise, generate, inpaint, super_resolve  # noqa: F401
from mtlgen_jax.tasks.base import Condition, Task, get_class, names, register

__all__ = ["Condition", "Task", "create_all", "get_class", "names", "register"]


def create_all(
    tasks_config, *, channels: int, image_size: int, num_classes: int
) -> tuple[Task, ...]:
    """Builds the tasks named in ``tasks_config.names`` (comma-separated), in order.

    Each task takes its parameters from ``tasks_config.<name>`` (a ConfigDict),
    which may be absent (defaults).
    """
    task_names = [n.strip() for n in str(tasks_config.names).split(",") if n.strip()]
    if not task_names:
        raise ValueError("config.tasks.names is empty; name at least one of: " + ", ".join(names()))
    if len(set(task_names)) != len(task_names):
        raise ValueError(f"config.tasks.names={tasks_config.names!r} names a task twice.")
    out = []
    for name in task_names:
        cls = get_class(name)
        params = dict(tasks_config.get(name, {}) or {})
        out.append(cls(channels=channels, image_size=image_size, num_classes=num_classes, **params))
    return tuple(out)
