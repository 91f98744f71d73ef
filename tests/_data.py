"""One TFDS data dir for the whole test run, where the embedded datasets are prepared once.

Preparing ``photo_patches`` (every train crop resized, cut and PNG-encoded) takes
seconds of CPU, and a dozen modules and subprocesses each prepared their own copy.
Tests that only need the data read it from :func:`shared`: a directory the controller
names once (conftest.py) and every xdist worker and subprocess inherits through
``$MTLGEN_TEST_DATA_DIR``; the first process to need a dataset prepares it there under
the product's own per-directory lock (``mtlgen_jax.data.sources``), the others wait and
read it. Tests of preparation itself (tests/test_data.py) keep fresh directories.
"""

import atexit
import os
import shutil
import tempfile

ENV = "MTLGEN_TEST_DATA_DIR"


def name_for_run() -> None:
    """Sets ``$MTLGEN_TEST_DATA_DIR`` to a fresh directory, removed when this process
    exits (the controller: after every worker has finished)."""
    if ENV not in os.environ:
        path = tempfile.mkdtemp(prefix="mtlgen_test_tfds_")
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        os.environ[ENV] = path


def shared() -> str:
    """The run's data dir (one per process where no controller named it)."""
    name_for_run()
    return os.environ[ENV]
