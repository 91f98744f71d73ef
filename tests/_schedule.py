"""Which test module each pytest-xdist worker runs next: the multi-device chain on one.

The README's test command runs the suite on two workers, a module at a time
(``--dist loadfile``). The modules in :data:`SERIAL_MODULES` launch multi-device
processes, which hold one lock in turn (tests/_serial.py): handed out to whichever
worker is free, as xdist does, both workers ended up in such modules at once and one
waited for the other (631 of 1364 s in a measured run), a core idle. Here the first
worker (the *serial* worker) takes those modules in the order listed, while the other
takes every other module; a worker with nothing left of its own kind takes the other
kind's next module (the serial worker from the front of the other modules, the other
worker from the back of the serial list, where the modules with the least time under
the lock are).

:func:`pick` is the policy; :func:`scheduler` wraps xdist's ``LoadFileScheduling``
with it (conftest.py's ``pytest_xdist_make_scheduler``). xdist's scheduler is not a
public API: where its work queue is not the ``OrderedDict`` this expects, xdist's own
order is kept.
"""

from __future__ import annotations

import os

# In the order the serial worker takes them: the longest lock holders first, the modules
# with most in-process work last (the other worker takes from this end).
SERIAL_MODULES = (
    "test_resume_devices.py",
    "test_parallel.py",
    "test_cifar10.py",
    "test_reliability.py",
    "test_api.py",
    "test_vit.py",
    "test_restore.py",
)


def is_serial(scope: str) -> bool:
    """Whether a work unit (a module's path) is one of :data:`SERIAL_MODULES`."""
    return os.path.basename(scope) in SERIAL_MODULES


def pick(scopes, serial_worker: bool) -> str:
    """The work unit a worker takes next, from the queue's ``scopes`` (in queue order)."""
    serial = sorted((s for s in scopes if is_serial(s)),
                    key=lambda s: SERIAL_MODULES.index(os.path.basename(s)))
    other = [s for s in scopes if not is_serial(s)]
    if not serial and not other:
        raise ValueError("no work unit left to pick")
    if serial_worker:
        return serial[0] if serial else other[0]
    return other[0] if other else serial[-1]


def scheduler(config, log):
    """xdist's ``LoadFileScheduling`` handing out modules by :func:`pick`."""
    from xdist.scheduler import LoadFileScheduling

    class SerialChainScheduling(LoadFileScheduling):
        def _assign_work_unit(self, node) -> None:
            queue = getattr(self, "workqueue", None)
            nodes = self.nodes
            if hasattr(queue, "move_to_end") and queue and nodes:
                queue.move_to_end(pick(list(queue), node is nodes[0]), last=False)
            super()._assign_work_unit(node)

    return SerialChainScheduling(config, log)
