"""The automatic CPU device count (mtlgen_jax.cpu_devices): choice and XLA_FLAGS handling."""

import os

import pytest

from configs import default
from mtlgen_jax import cpu_devices


@pytest.mark.parametrize("batch, accum, cores, expected", [
    (32, 1, 2, 2),
    (32, 1, 16, 8),  # capped at MAX_AUTO
    (30, 1, 8, 6),  # the largest divisor of the batch <= cores
    (7, 1, 4, 1),  # a prime batch: one device
    (32, 8, 8, 4),  # every device needs whole micro-batches: 32 / 4 = 8 = 1 x 8
    (16, 1, 1, 1),
])
def test_choose(batch, accum, cores, expected):
    assert cpu_devices.choose(batch, accum, cores=cores) == expected


@pytest.fixture
def fresh_backend(monkeypatch):
    """Pretend JAX has not started, with no XLA_FLAGS and no JAX_PLATFORMS."""
    monkeypatch.setattr(cpu_devices, "_backend_started", lambda: False)
    monkeypatch.setattr(cpu_devices, "available_cores", lambda: 4)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    return monkeypatch


def test_configure_sets_the_count(fresh_backend):
    c = default.get_config()  # batch 32, 4 cores -> 4 devices
    fresh_backend.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert cpu_devices.configure(c) == 4
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                       "--xla_force_host_platform_device_count=4")


def test_configure_respects_the_user_and_accelerators(fresh_backend):
    c = default.get_config()
    fresh_backend.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert cpu_devices.configure(c) is None
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    fresh_backend.delenv("XLA_FLAGS")
    fresh_backend.setenv("JAX_PLATFORMS", "cuda")
    assert cpu_devices.configure(c) is None and "XLA_FLAGS" not in os.environ
    fresh_backend.setenv("JAX_PLATFORMS", "cpu")
    c.parallel.cpu_devices = 1  # off
    assert cpu_devices.configure(c) == 1 and "XLA_FLAGS" not in os.environ


def test_configure_per_process_batch_and_bad_counts(fresh_backend):
    c = default.get_config()
    assert cpu_devices.configure(c, num_processes=16) == 2  # 32 / 16 = 2 per process
    fresh_backend.delenv("XLA_FLAGS")
    c.parallel.cpu_devices = 5
    with pytest.raises(ValueError, match="cpu_devices=5 does not split .* batch of 32"):
        cpu_devices.configure(c)
    c.parallel.cpu_devices = -1
    with pytest.raises(ValueError, match="cpu_devices=-1 must be >= 0"):
        cpu_devices.configure(c)


def test_configure_after_jax_started_changes_nothing(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    import jax

    jax.devices()  # the backend is up in this process
    assert cpu_devices.configure(default.get_config()) is None
    assert "XLA_FLAGS" not in os.environ
