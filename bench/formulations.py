"""Same function, other formulation: train-step time of equivalent rewrites, as ratios.

    python bench/formulations.py [--json PATH] [--rounds 3] [--steps 3] [--only heads,upsample]

Each variant computes the same train step as the library (checked here: the
per-task losses and the gradient norm of one step from the same state agree to
float32 rounding), only written differently. Nothing in the library changes:
the rewrites live in this file and are swapped in for the measurement.

  heads     every example runs only ITS task's head (GroupNorm statistics once,
            the head's scale/bias/kernel gathered per example, the 3x3 conv as
            nine shifted batched matmuls) instead of all K heads on every
            example and a one-hot selection afterwards;
  heads_conv  the same, but the head's 3x3 conv as ONE ordinary convolution with
            all K kernels (K*C output channels), each example keeping its C: the
            K GroupNorm+SiLU passes are saved, the conv stays a library conv;
  upsample  the decoder's nearest 2x upsampling as ``jnp.repeat`` (a broadcast;
            its gradient a 2x2 window sum) instead of ``jax.image.resize``
            (whose gradient XLA:CPU runs as a scatter-like broadcast);
  threefry  JAX's unrolled threefry lowering on CPU (as on GPU/TPU) instead of
            the rolled 5-iteration while loop JAX uses on CPU to save compile
            time; every random draw of the step (per-example degrade keys,
            noise, times) is then straight-line code. Same bits.
  all       the three together.
  data_parallel  the unchanged step over all CPU devices (batch sharded, psum'd
            gradients: the library's own multi-device path, same numbers up to
            the order of the sum). Only when JAX sees several CPU devices, i.e.
            run with ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` (the
            other variants then use the first device only).

Timing: every variant is compiled first; then ``--rounds`` rounds, each timing
``--steps`` steps of every variant in turn (so load changes of a shared
machine hit all alike); the median step time of each is compared with the
baseline's. Takes ~4-6 minutes on a busy 2-core host (one compile per variant).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from mtlgen_jax.models import MultiTaskModel  # noqa: E402
from mtlgen_jax.models.unet import _groups  # noqa: E402

# --------------------------------------------------------------------------- heads


class SelectedHeadsModel(MultiTaskModel):
    """``MultiTaskModel`` with the same parameters and outputs; each example runs one head.

    The K heads normalise the SAME features, so the GroupNorm statistics are
    computed once; each example then takes its own task's scale, bias, kernel and
    conv bias (a gather over the task axis), so the head's cost is paid once per
    example instead of K times. At init it defers to the parent (same parameters).
    """

    conv_all: bool = False  # the head conv: per-example kernels, or all K kernels at once

    def __call__(self, x_noisy, condition, t, task_id, label=None, *, train: bool = False):
        if self.is_initializing():
            return super().__call__(x_noisy, condition, t, task_id, label, train=train)
        x = jnp.concatenate([x_noisy, condition.image, condition.mask], axis=-1)
        features = self.unet(x, t, task_id, label, train=train)  # [B, H, W, F]
        params = self.variables["params"]
        heads = [params[f"head_{name}"] for name in self.tasks]
        stack = lambda f: jnp.stack([f(h) for h in heads])[task_id]  # noqa: E731 [B, ...]
        scale, bias = stack(lambda h: h["GroupNorm_0"]["scale"]), stack(
            lambda h: h["GroupNorm_0"]["bias"])  # [B, F]
        kernel, conv_bias = stack(lambda h: h["Conv_0"]["kernel"]), stack(
            lambda h: h["Conv_0"]["bias"])  # [B, 3, 3, F, C], [B, C]
        norm = _group_norm(features).astype(self.dtype)
        h = nn.silu(norm * scale[:, None, None, :].astype(norm.dtype)
                    + bias[:, None, None, :].astype(norm.dtype))
        if self.conv_all:
            # One ordinary conv with all K kernels (K*C outputs), then each example's C.
            k, c = len(heads), self.out_channels
            kernels = jnp.concatenate([hd["Conv_0"]["kernel"] for hd in heads], axis=-1)
            out = jax.lax.conv_general_dilated(h, kernels.astype(h.dtype), (1, 1), "SAME",
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
            out = out.reshape(out.shape[:-1] + (k, c))
            out = jnp.take_along_axis(out, task_id[:, None, None, None, None], axis=3)[..., 0, :]
            return (out + conv_bias[:, None, None, :].astype(h.dtype)).astype(jnp.float32)
        b, hh, ww, _ = h.shape
        padded = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = conv_bias[:, None, None, :].astype(h.dtype)
        for dy in range(3):  # SAME 3x3 conv with a per-example kernel
            for dx in range(3):
                out = out + jnp.einsum("bhwf,bfc->bhwc", padded[:, dy:dy + hh, dx:dx + ww],
                                       kernel[:, dy, dx].astype(h.dtype))
        return out.astype(jnp.float32)


def _group_norm(x, epsilon: float = 1e-6):
    """flax.linen.GroupNorm without scale/bias (same groups, epsilon, fast variance)."""
    b, h, w, f = x.shape
    g = _groups(f)
    xg = x.astype(jnp.float32).reshape(b, h, w, g, f // g)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = jnp.maximum((xg * xg).mean(axis=(1, 2, 4), keepdims=True) - mean * mean, 0.0)
    return ((xg - mean) * jax.lax.rsqrt(var + epsilon)).reshape(b, h, w, f)


def use_selected_heads(comp, conv_all: bool = False):
    m = comp.model
    model = SelectedHeadsModel(tasks=m.tasks, out_channels=m.out_channels, backbone=m.backbone,
                               num_classes=m.num_classes, dtype=m.dtype, conv_all=conv_all)
    return dataclasses.replace(comp, model=model)


# --------------------------------------------------------------------------- lowering patches


@contextlib.contextmanager
def repeat_upsample():
    """``jax.image.resize(..., 'nearest')`` by integer factors as ``jnp.repeat`` (exact)."""
    original = jax.image.resize

    def resize(image, shape, method, *args, **kwargs):
        factors = [o // i if i and o % i == 0 else 0 for i, o in zip(image.shape, shape)]
        if str(method) == "nearest" and all(factors):
            for axis, f in enumerate(factors):
                if f > 1:
                    image = jnp.repeat(image, f, axis=axis)
            return image
        return original(image, shape, method, *args, **kwargs)

    jax.image.resize = resize
    try:
        yield
    finally:
        jax.image.resize = original


@contextlib.contextmanager
def unrolled_threefry():
    """Lower threefry2x32 on CPU with the unrolled rule (what GPU/TPU use)."""
    from jax._src.interpreters import mlir
    from jax._src.random import threefry2x32 as tf

    mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_lowering_rule, platform="cpu")
    try:
        yield
    finally:
        mlir.register_lowering(tf.threefry2x32_p, tf._threefry2x32_cpu_lowering_rule,
                               platform="cpu")


VARIANTS = {
    "baseline": (None, ()),
    "heads": (use_selected_heads, ()),
    "heads_conv": (functools.partial(use_selected_heads, conv_all=True), ()),
    "upsample": (None, (repeat_upsample,)),
    "threefry": (None, (unrolled_threefry,)),
    "all": (use_selected_heads, (repeat_upsample, unrolled_threefry)),
    # Not a rewrite: the same step data-parallel over every CPU device (needs
    # XLA_FLAGS=--xla_force_host_platform_device_count=N set before JAX starts).
    "data_parallel": (None, ()),
}


class Variant:
    """One formulation: its compiled step, and its first steps from the seeded initial state."""

    def __init__(self, name, config, host_batches, *, check_steps: int):
        edit, patches = VARIANTS[name]
        self.name = name
        devices = jax.devices() if name == "data_parallel" else jax.devices()[:1]
        self.bench = common.StepBench(config, common.synthetic_info(config), edit=edit,
                                      devices=devices)
        self.batches = [self.bench.par.shard_batch(b) for b in host_batches]
        t0 = time.perf_counter()
        with contextlib.ExitStack() as stack:
            for patch in patches:
                stack.enter_context(patch())
            self.compiled = self.bench.compiled(self.batches[0])
        self.compile_s = time.perf_counter() - t0
        self.flops = self.bench.step_flops(self.compiled)
        # The same seeded state and batches for every variant: their results must agree.
        self.check_metrics = [jax.device_get(self.step(i)) for i in range(check_steps)]
        self.check_params = jax.device_get(self.bench.par.unreplicate(self.bench.state).params)

    def step(self, i=None):
        i = self.i if i is None else i
        b = self.bench
        b.state, metrics = self.compiled(b.state, self.batches[i % len(self.batches)])
        jax.block_until_ready((b.state, metrics))
        self.i = i + 1
        return metrics


def compare(base: Variant, other: Variant) -> tuple[float, float]:
    """(largest relative difference of the losses / gradient norms over the checked steps,
    largest parameter difference after them relative to the largest parameter)."""
    metrics = 0.0
    for a, b in zip(base.check_metrics, other.check_metrics):
        for k in a:
            if k.startswith("loss") or k == "grad_norm":
                x, y = (float(np.asarray(m[k]).reshape(-1)[0]) for m in (a, b))
                metrics = max(metrics, abs(x - y) / max(abs(x), 1e-12))
    pa, pb = jax.tree.leaves(base.check_params), jax.tree.leaves(other.check_params)
    scale = max(float(np.abs(x).max()) for x in pa)
    params = max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(pa, pb))
    return metrics, params / scale


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--config", default="default")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--only", default="", help="comma-separated variants (baseline is added)")
    p.add_argument("--check-steps", type=int, default=3,
                   help="steps from the same state whose results every variant must reproduce")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest relative difference (losses, grad norm, params) counted as equal")
    args = p.parse_args(argv)
    names = ["baseline"] + [n for n in (args.only.split(",") if args.only else VARIANTS)
                            if n and n != "baseline"]
    if "data_parallel" in names and jax.device_count() < 2:
        print("data_parallel needs several devices: skipped (run with "
              "XLA_FLAGS=--xla_force_host_platform_device_count=2)")
        names.remove("data_parallel")
    config = common.load_config(args.config)
    probe = common.StepBench(config, common.synthetic_info(config), devices=jax.devices()[:1])
    host_batches = [probe.host_batch_np(i) for i in range(4)]
    del probe

    variants = []
    for name in names:
        v = Variant(name, config, host_batches, check_steps=args.check_steps)
        print(f"{name}: compiled in {v.compile_s:.1f}s", flush=True)
        variants.append(v)
    base = variants[0]
    times = {v.name: [] for v in variants}
    for v in variants:
        v.step()  # warm-up
    for _ in range(args.rounds):
        for v in variants:
            for _ in range(args.steps):
                t0 = time.perf_counter()
                v.step()
                times[v.name].append(time.perf_counter() - t0)

    med = {n: statistics.median(ts) for n, ts in times.items()}
    result = {"batch_size": config.batch_size, "rounds": args.rounds, "steps": args.steps,
              "variants": {}}
    rows = []
    for v in variants:
        diff, pdiff = compare(base, v)
        entry = {"median_step_s": med[v.name], "speedup_vs_baseline": med["baseline"] / med[v.name],
                 "images_per_sec": config.batch_size / med[v.name], "compile_s": v.compile_s,
                 "flops_per_step": v.flops, "max_rel_diff_losses_grad_norm": diff,
                 "max_rel_diff_params": pdiff,
                 "same_function": diff <= args.tolerance and pdiff <= args.tolerance,
                 "step_times_s": times[v.name]}
        result["variants"][v.name] = entry
        rows.append([v.name, med[v.name] * 1e3, entry["speedup_vs_baseline"],
                     entry["images_per_sec"], v.compile_s, (v.flops or 0) / 1e9, diff, pdiff])
    rows.sort(key=lambda r: -r[2])
    common.print_table(rows, ["variant", "median ms", "speedup", "images/s", "compile s",
                              "GFLOP/step", "diff losses", "diff params"],
                       title=f"equivalent formulations, batch {config.batch_size}")
    bad = [v.name for v in variants if not result["variants"][v.name]["same_function"]]
    if bad:
        print(f"WARNING: {bad} differ from the baseline by more than {args.tolerance}")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
