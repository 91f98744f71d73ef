"""Data parallelism: 1 device == 8 devices == 2 processes x 4 devices; shard_map == pmap.

Each configuration runs in a subprocess (tests/_multidevice.py), since the number
of simulated CPU devices is fixed when JAX starts.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "_multidevice.py")


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return env


def _parse(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def start(*args):
    return subprocess.Popen([sys.executable, SCRIPT, *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=600) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-5000:]
    return _parse(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_same_run(a: dict, b: dict, rtol=2e-5, atol=2e-6):
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=rtol, atol=atol)
    np.testing.assert_allclose(a["params_head"], b["params_head"], rtol=1e-4, atol=5e-6)
    np.testing.assert_allclose(a["params_abs"], b["params_abs"], rtol=1e-6)


@pytest.fixture(scope="module")
def runs():
    """The reference runs, started together to overlap their start-up."""
    procs = {
        "sm1": start("--devices", 1, "--backend", "shard_map"),
        "sm8": start("--devices", 8, "--backend", "shard_map"),
        "pm8": start("--devices", 8, "--backend", "pmap"),
        "mgda1": start("--devices", 1, "--weighting", "mgda"),
        "mgda8": start("--devices", 8, "--weighting", "mgda"),
        "acc4": start("--devices", 2, "--accum", 4),
        "mgda_acc2": start("--devices", 1, "--weighting", "mgda", "--accum", 2),
    }
    return {k: finish(p) for k, p in procs.items()}


def test_one_device_equals_eight(runs):
    assert runs["sm1"]["devices"] == 1 and runs["sm8"]["devices"] == 8
    assert_same_run(runs["sm1"], runs["sm8"])


def test_gradient_strategy_one_device_equals_eight(runs):
    """Per-task gradients are averaged over devices before MGDA combines them."""
    assert_same_run(runs["mgda1"], runs["mgda8"])
    assert runs["mgda8"]["losses"] != runs["sm8"]["losses"]  # MGDA really changed the run


def test_gradient_accumulation_equals_one_big_batch(runs):
    """2 devices x 4 micro-batches == 1 device x 1 batch (loss weighting and MGDA)."""
    assert_same_run(runs["sm1"], runs["acc4"])
    assert_same_run(runs["mgda1"], runs["mgda_acc2"])


def test_shard_map_equals_pmap(runs):
    assert_same_run(runs["sm8"], runs["pm8"])


def test_step_compiles_once(runs):
    assert runs["sm8"]["cache_size"] == 1
    assert runs["sm8"]["temp_bytes"] is not None  # memory_analysis of the compiled step


def test_two_processes_equal_one(runs):
    port = free_port()
    procs = [start("--devices", 4, "--backend", "shard_map", "--num_processes", 2,
                   "--process_id", i, "--port", port) for i in range(2)]
    results = [finish(p) if i == 0 else procs[1].communicate(timeout=600) for i, p in
               enumerate(procs)]
    assert procs[1].returncode == 0, results[1][1][-3000:]
    two = results[0]
    assert two["processes"] == 2 and two["devices"] == 8
    assert_same_run(two, runs["sm8"])


def test_bfloat16_trains_and_tracks_float32():
    f32 = start("--devices", 1, "--steps", 6, "--lr", 3e-3)
    bf16 = start("--devices", 1, "--steps", 6, "--lr", 3e-3, "--dtype", "bfloat16")
    a, b = finish(f32), finish(bf16)
    la, lb = np.sum(a["losses"], axis=1), np.sum(b["losses"], axis=1)
    assert lb[-1] < lb[0]  # bf16 trains
    np.testing.assert_allclose(lb, la, rtol=0.05)  # and stays close to float32
