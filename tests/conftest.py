"""Shared pytest setup: CPU only, quiet TensorFlow, fast XLA compiles."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Subprocess runs split the 2 test cores into devices and several run at once: a starved
# device thread must not trip XLA's 40 s collective rendezvous timeout.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_collective_call_terminate_timeout_seconds=600")

# One persistent compilation cache for the whole session, this process and every
# subprocess a test launches (they inherit os.environ): the tiny models of the suite
# compile the same programs over and over (each Trainer jits afresh, each subprocess
# run starts cold), and a cache hit is what a recompile then costs.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="mtlgen_test_jax_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")

import _data  # noqa: E402
import _schedule  # noqa: E402
import _serial  # noqa: E402
import jax  # noqa: E402
import pytest  # noqa: E402

# Test compiles dominate the suite; the speed of the compiled code does not matter here.
jax.config.update("jax_disable_most_optimizations", True)


def pytest_collection_modifyitems(config, items):
    """Modules marked ``heavy`` first, in file order, then the rest (a stable sort).

    The README's test command runs the suite on two pytest-xdist workers, a module
    (and its module-scoped fixture) per worker (``--dist loadfile``) in this order
    (``--no-loadscope-reorder``): the modules that take minutes start at once, and the
    many small ones fill in beside them instead of leaving one worker idle at the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("heavy") is None)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest without xdist ignores it
def pytest_xdist_make_scheduler(config, log):
    """With ``--dist loadfile`` (the README's command): the modules that launch
    multi-device processes go to one worker, the rest to the other (tests/_schedule.py)."""
    if config.getvalue("dist") == "loadfile":
        return _schedule.scheduler(config, log)
    return None


def pytest_configure(config):
    """The controller (not an xdist worker) names the shared TFDS data dir and the
    multi-device lock's log, which the workers it starts inherit (tests/_data.py,
    tests/_serial.py)."""
    if hasattr(config, "workerinput"):
        return
    _data.name_for_run()  # one prepared TFDS dir for every worker (tests/_data.py)
    if _serial.LOG_ENV not in os.environ:
        fd, log = tempfile.mkstemp(prefix="mtlgen_tests_lock_", suffix=".jsonl")
        os.close(fd)
        atexit.register(lambda: os.path.exists(log) and os.remove(log))
        os.environ[_serial.LOG_ENV] = log


def pytest_terminal_summary(terminalreporter, config):
    """Where the 2 test cores' serial chain went: the multi-device lock's holders."""
    log = os.environ.get(_serial.LOG_ENV)
    if hasattr(config, "workerinput") or not log or not os.path.exists(log):
        return
    with open(log) as f:
        for line in _serial.summary(f.readlines()):
            terminalreporter.write_line(line)
