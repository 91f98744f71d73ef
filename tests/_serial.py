"""One multi-device subprocess at a time, across pytest-xdist workers.

The README's test command runs two workers. Two processes that each simulate several
XLA:CPU devices, run at once on the 2 test cores, were seen to hang in a collective
(one device thread never reaches the rendezvous, and XLA aborts the process after
its termination timeout). Every test that launches such a process holds this lock
for the process's lifetime, so those runs follow one another as in a one-process
suite, while the other worker goes on with in-process tests. Without xdist (no
``PYTEST_XDIST_TESTRUNUID``) the lock is a no-op.
"""

import contextlib
import fcntl
import os
import subprocess
import tempfile


@contextlib.contextmanager
def multidevice():
    """Holds the run's multi-device lock (an exclusive ``flock``) while the block runs."""
    uid = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not uid:
        yield
        return
    path = os.path.join(tempfile.gettempdir(), f"mtlgen_tests_{uid}.multidevice.lock")
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` under the lock."""
    with multidevice():
        return subprocess.run(*args, **kwargs)
