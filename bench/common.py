"""Shared helpers of the benchmarks: build the step on synthetic data, time, report.

Every benchmark is one script, ``python bench/NAME.py [--json PATH]``; this
module holds what they share so each script reads as its measurement only.
Nothing here changes the library: the train step, model, sampler and input
pipeline are used exactly as ``train.py`` uses them.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `configs/` is not an installed package.
    sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

# --------------------------------------------------------------------------- config + step


def load_config(name: str = "default", variant: str = ""):
    """``configs/<name>.py``'s ``get_config(variant)``; ``name`` may be ``'default:vit'``
    (the launcher's ``--config configs/default.py:vit`` spelling, without the path)."""
    name = name.removeprefix("configs/").replace(".py", "")
    if ":" in name:
        name, variant = name.split(":", 1)
    return importlib.import_module(f"configs.{name}").get_config(variant)


def small_model(config, *, batch: int = 16) -> None:
    """A small model with the config's tasks: 16x16 images, width 16, two levels -- for
    benchmarks whose point is a ratio or a smoke run, not the default model's speed."""
    config.batch_size = batch
    config.dataset.image_size = 16
    config.model.width = 16
    config.model.channel_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (8,)
    config.model.num_heads = 2


def synthetic_info(config, *, num_classes: int | None = None, channels: int = 3):
    """A DatasetInfo for synthetic batches: nothing is read, prepared or downloaded
    (``mtlgen_jax.data.info`` imports without TensorFlow, e.g. on a GPU image)."""
    from mtlgen_jax.data.info import DatasetInfo

    return DatasetInfo(name="synthetic", num_classes=num_classes, channels=channels,
                       image_size=config.dataset.image_size, num_train=1024, num_test=64,
                       train_split="train", test_split="test")


class StepBench:
    """The wrapped train step of ``config``, its state and synthetic device batches.

    Built by ``components.build_run``, as ``train.Trainer`` builds them (state donated).

    Args:
      config, info: the run's config and (synthetic) DatasetInfo.
      backend: overrides ``config.parallel.backend``.
      edit: optional ``Components -> Components`` (e.g. another, equivalent model).
      devices: the devices to run on (default: all).
    """

    def __init__(self, config, info, *, backend: str | None = None,
                 edit: Callable[[Any], Any] | None = None, devices=None):
        from mtlgen_jax import components

        self.config, self.info = config, info
        comp = components.build(config, info)
        parts = components.build_run(config, comp=edit(comp) if edit else comp,
                                     backend=backend, devices=devices)
        self.comp, self.par, self.host_batch = parts.comp, parts.par, parts.host_batch
        self.init_fn, self.step = parts.init_fn, parts.step_fn
        self.state = self.par.init_state(self.init_fn)

    @property
    def num_params(self) -> int:
        params = self.par.unreplicate(self.state).params
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))

    def host_batch_np(self, seed: int) -> dict[str, np.ndarray]:
        """One process's batch of random uint8 images (and labels)."""
        rng = np.random.default_rng(seed)
        s, c = self.info.image_size, self.info.channels
        n = self.host_batch
        return {"image": rng.integers(0, 256, (n, s, s, c), dtype=np.uint8),
                "label": rng.integers(0, max(self.info.num_classes or 1, 1), (n,)).astype(np.int32)}

    def device_batches(self, count: int = 4) -> list[Any]:
        """``count`` distinct synthetic batches, already on device (sharded like real ones)."""
        out = [self.par.shard_batch(self.host_batch_np(i)) for i in range(count)]
        jax.block_until_ready(out)
        return out

    def compiled(self, batch):
        """The AOT-compiled step for ``batch``'s shapes (a separate compile, same HLO)."""
        return self.step.lower(self.state, batch).compile()

    def step_flops(self, compiled) -> float | None:
        """FLOPs of one step over ALL devices (cost analysis counts one device's program)."""
        flops = cost_flops(compiled)
        return flops * self.par.num_devices if flops else None

    def run(self, batches: Sequence[Any], steps: int) -> list[float]:
        """Runs ``steps`` steps (cycling ``batches``); seconds of each, each one blocked on."""
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            self.state, metrics = self.step(self.state, batches[i % len(batches)])
            jax.block_until_ready((self.state, metrics))
            times.append(time.perf_counter() - t0)
        return times


def cost_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled executable, from XLA's cost analysis."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per device program
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops is not None and flops > 0 else None


# --------------------------------------------------------------------------- timing


def stats(times: Sequence[float]) -> dict[str, float]:
    """min / median / mean / max of a list of seconds."""
    return {"min_s": min(times), "median_s": statistics.median(times),
            "mean_s": statistics.fmean(times), "max_s": max(times), "n": len(times)}


def time_fn(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn()`` (blocked on), after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return times


def matmul_flops_per_sec(n: int, dtype=jnp.float32, *, repeats: int = 5,
                         device=None) -> dict[str, float]:
    """The practical peak: FLOP/s of a jitted ``[n, n] @ [n, n]`` (best of ``repeats``).

    Four matmuls per call (a chain), so dispatch is a small part of each timing.
    """
    device = device or jax.devices()[0]
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (jax.device_put(jax.random.normal(k, (n, n), jnp.float32).astype(dtype), device)
            for k in keys)
    scale = jnp.asarray(1.0 / np.sqrt(n), dtype)

    @jax.jit
    def chain(a, b):
        for _ in range(4):
            a = (a @ b) * scale  # the scale keeps values O(1); its cost is n^2, not n^3
        return a

    times = time_fn(lambda: chain(a, b), warmup=1, repeats=repeats)
    flops = 4 * 2.0 * n**3
    return {"n": n, "dtype": jnp.dtype(dtype).name, "flops_per_sec": flops / min(times),
            "flops_per_sec_median": flops / statistics.median(times)}


class CompileCounter:
    """Counts XLA backend compilations (and their seconds) per jitted function name.

    Uses ``jax.monitoring``'s duration events, which jax records once per real
    compilation (cache hits record nothing).
    """

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.events: list[tuple[str, float]] = []
        self.active = True
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if self.active and event == self.EVENT:
            self.events.append((str(kwargs.get("fun_name", "?")), float(duration)))

    def mark(self) -> int:
        return len(self.events)

    def since(self, mark: int, name_contains: str = "") -> list[tuple[str, float]]:
        return [e for e in self.events[mark:] if name_contains in e[0]]


# --------------------------------------------------------------------------- reporting


def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # noqa: BLE001 - a missing optional package is just "not installed"
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where and with what the numbers were taken (goes into every JSON)."""
    dev = jax.devices()[0]
    info = {
        "host": platform.node(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "optax": _version("optax"),
        "numpy": np.__version__,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),  # huge pages: cpu_devices
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for name in ("torch", "tensorflow"):  # only when this run imported them
        version = getattr(sys.modules.get(name), "__version__", None)
        if version:
            info[name] = version
    return info


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], title: str = "") -> None:
    """A plain aligned text table on stdout."""
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))


def write_json(path: str | None, result: dict[str, Any]) -> None:
    """Writes ``result`` (with ``machine()``) to ``path`` when given."""
    result.setdefault("machine", machine())
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2, sort_keys=False, default=_jsonable)
    print(f"\nwrote {path}")


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return str(x)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None
