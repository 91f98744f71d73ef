"""The automatic CPU device count (mtlgen_jax.cpu_devices): choice and XLA_FLAGS handling."""

import os

import pytest

from configs import default
from mtlgen_jax import cpu_devices


@pytest.mark.parametrize("batch, accum, cores, expected", [
    (32, 1, 2, 4),  # two devices per core
    (32, 1, 16, 8),  # capped at MAX_AUTO
    (30, 1, 8, 6),  # the largest divisor of the batch <= min(2 x cores, MAX_AUTO)
    (30, 1, 2, 3),
    (7, 1, 4, 7),
    (11, 1, 4, 1),  # a prime batch over the cap: one device
    (32, 8, 8, 4),  # every device needs whole micro-batches: 32 / 4 = 8 = 1 x 8
    (16, 1, 1, 2),
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
    c = default.get_config()  # batch 32, 4 cores -> 8 devices
    fresh_backend.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert cpu_devices.configure(c) == 8
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_enable_fast_math=false "
                                       "--xla_force_host_platform_device_count=8 "
                                       "--xla_cpu_collective_call_terminate_timeout_seconds=600")
    # A timeout the user set is kept.
    fresh_backend.setenv("XLA_FLAGS", "--xla_cpu_collective_call_terminate_timeout_seconds=9")
    assert cpu_devices.configure(c) == 8
    assert os.environ["XLA_FLAGS"] == ("--xla_cpu_collective_call_terminate_timeout_seconds=9 "
                                       "--xla_force_host_platform_device_count=8")


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


class _Exec(Exception):
    pass


@pytest.fixture
def exec_spy(monkeypatch):
    """os.execv records its arguments (and the environment it would pass) instead."""
    calls = []

    def fake_execv(path, argv):
        calls.append((path, list(argv), os.environ.get("GLIBC_TUNABLES")))
        raise _Exec

    monkeypatch.setattr(cpu_devices.os, "execv", fake_execv)
    monkeypatch.setattr(cpu_devices, "huge_pages_available", lambda: True)
    monkeypatch.setattr(cpu_devices.sys, "orig_argv", ["python3", "-m", "some.module", "--x=1"])
    for name in ("GLIBC_TUNABLES", "MTLGEN_HUGE_PAGES"):  # set then deleted: restored after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    return monkeypatch, calls


def test_reexec_restarts_the_same_command_once_with_the_tunable(exec_spy):
    monkeypatch, calls = exec_spy
    with pytest.raises(_Exec):
        cpu_devices.reexec_with_huge_pages()
    assert calls == [(cpu_devices.sys.executable,
                      [cpu_devices.sys.executable, "-m", "some.module", "--x=1"],
                      "glibc.malloc.hugetlb=1")]
    cpu_devices.reexec_with_huge_pages()  # the restarted process: already set, returns
    assert len(calls) == 1
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # the user's are kept
    with pytest.raises(_Exec):
        cpu_devices.reexec_with_huge_pages()
    assert calls[-1][2] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def test_reexec_respects_the_opt_out_and_hosts_without_huge_pages(exec_spy):
    monkeypatch, calls = exec_spy
    monkeypatch.setenv("MTLGEN_HUGE_PAGES", "0")
    cpu_devices.reexec_with_huge_pages()
    monkeypatch.delenv("MTLGEN_HUGE_PAGES")
    monkeypatch.setattr(cpu_devices, "huge_pages_available", lambda: False)
    cpu_devices.reexec_with_huge_pages()
    assert calls == [] and "GLIBC_TUNABLES" not in os.environ


@pytest.mark.parametrize("libc, thp, expected", [
    ("glibc 2.36", "always [madvise] never", True),
    ("glibc 2.35", "[always] madvise never", True),
    ("glibc 2.31", "always [madvise] never", False),  # no hugetlb tunable before 2.35
    ("glibc 2.36", "always madvise [never]", False),  # huge pages switched off
])
def test_huge_pages_available(monkeypatch, tmp_path, libc, thp, expected):
    (tmp_path / "enabled").write_text(thp + "\n")
    monkeypatch.setattr(cpu_devices, "_THP", str(tmp_path / "enabled"))
    monkeypatch.setattr(cpu_devices.os, "confstr", lambda name: libc)
    monkeypatch.setattr(cpu_devices.sys, "platform", "linux")
    assert cpu_devices.huge_pages_available() is expected
