"""One multi-device subprocess at a time, across pytest-xdist workers.

The README's test command runs two workers. Two processes that each simulate several
XLA:CPU devices, run at once on the 2 test cores, were seen to hang in a collective
(one device thread never reaches the rendezvous, and XLA aborts the process after
its termination timeout). Every test that launches such a process holds this lock
for the process's lifetime, so those runs follow one another as in a one-process
suite, while the other worker goes on with in-process tests. A process of one device
and one process (``devices=1``) has no collective to hang in and runs like an
in-process test, without the lock. Without xdist (no ``PYTEST_XDIST_TESTRUNUID``) the
lock is a no-op.

The chain of lock holders is the suite's critical path on 2 cores: each hold and wait is
appended to the file ``$MTLGEN_TEST_LOCK_LOG`` names (set by conftest.py), and the
terminal summary prints :func:`summary` of it.
"""

import collections
import contextlib
import fcntl
import json
import os
import subprocess
import tempfile
import time

LOG_ENV = "MTLGEN_TEST_LOCK_LOG"


@contextlib.contextmanager
def multidevice(devices: int | None = None):
    """Holds the run's multi-device lock (an exclusive ``flock``) while the block runs;
    ``devices=1`` (one single-device process: no collectives) holds nothing."""
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not uid or devices == 1:
        yield
        return
    path = os.path.join(tempfile.gettempdir(), f"mtlgen_tests_{uid}.multidevice.lock")
    with open(path, "a") as f:
        asked = time.monotonic()
        fcntl.flock(f, fcntl.LOCK_EX)
        got = time.monotonic()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            _record(waited=got - asked, held=time.monotonic() - got)


def _record(waited: float, held: float) -> None:
    """Appends one hold of the lock (by the test running now) to ``$MTLGEN_TEST_LOCK_LOG``."""
    log = os.environ.get(LOG_ENV)
    if not log:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?")  # 'path::name (setup|call)'
    with open(log, "a") as f:  # one short O_APPEND write per line: whole lines
        f.write(json.dumps({"test": test, "waited": waited, "held": held}) + "\n")


def summary(lines, top: int = 8) -> list[str]:
    """Text lines about the lock from the log's JSON lines: the total time it was held
    (the serial chain) and waited for, then the ``top`` holders by time held."""
    held, waited = collections.Counter(), collections.Counter()
    for line in lines:
        if line.strip():
            r = json.loads(line)
            held[r["test"]] += r["held"]
            waited[r["test"]] += r["waited"]
    if not held:
        return []
    out = [f"multi-device lock: held {sum(held.values()):.0f} s in all (the serial chain), "
           f"waited for {sum(waited.values()):.0f} s, {len(held)} holders; longest holds:"]
    out += [f"  {t:7.1f} s held, {waited[name]:6.1f} s waited  {name}"
            for name, t in held.most_common(top)]
    return out


def run(*args, devices: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` under the lock (none for ``devices=1``: see :func:`multidevice`)."""
    with multidevice(devices):
        return subprocess.run(*args, **kwargs)
