"""Train-step throughput of the default config, beside the practical peak and a PyTorch peer.

    python bench/train_step.py [--json PATH] [--steps 8] [--rounds 2] [--no-torch-compile]

Measures, in one process and on the same synthetic batch shape:
  * the JAX train step of ``configs/default.py`` (as ``train.py`` builds it, over
    the CPU devices ``launch.py`` would split the host into: ``--cpu-devices``):
    images/s and achieved FLOP/s, with the step's FLOPs from XLA's cost analysis
    of the compiled executable (the same executable that is timed); with several
    devices, also the same step on one of them (``jax_1dev``);
  * the FLOP/s of a large jitted float32 matmul (the practical peak of this
    machine for XLA), measured before and after the steps (the better is kept);
  * the PyTorch peer (``bench/peers/torch_unet.py``: same U-Net, heads,
    parameter count - asserted - and multi-task step), eager and under
    ``torch.compile``, with ``torch.set_num_threads(os.cpu_count())``.

Timing: warm-up steps first, then ``--rounds`` rounds that each time ``--steps /
--rounds`` steps of every contender in turn (so a change of machine load hits
all of them alike); each step is blocked on; the median step time gives
images/s. Writes ``{"images_per_sec", "flops_per_sec", "matmul_flops_per_sec",
"torch_eager_images_per_sec", "torch_compile_images_per_sec", ...}`` (null
where not measured).

The first ``torch.compile`` on a machine compiles for minutes (about 4 on a
busy 2-core host); inductor caches it (``/tmp/torchinductor_$USER``), so later
runs take seconds. ``--no-torch-compile`` skips it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402

TORCH_NOTES = (
    "Torch peer: same layers, shapes and parameter count (asserted). Differences: "
    "one batched random draw per task instead of a per-example key; torch bicubic "
    "(a=-0.75) vs jax cubic (a=-0.5) for the super-resolution condition; constant lr "
    "(no warmup/cosine schedule); fixed-decay EMA; no update/param-norm metrics; "
    "symmetric padding of the stride-2 conv (same shapes and FLOPs). Degrade, "
    "optimizer and EMA run eager in both torch variants; torch.compile wraps the "
    "model forward + loss (and so its backward)."
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--config", default="default", help="configs/<name>.py")
    p.add_argument("--batch", type=int, default=None, help="override config.batch_size")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="override config.dtype (the torch peer is float32: skipped otherwise)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per contender")
    p.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per contender")
    p.add_argument("--matmul", type=int, default=2048, help="matmul size n for the peak")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peer")
    p.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="JAX CPU devices (config.parallel.cpu_devices; default: the config's, "
                        "0 = automatic as in launch.py; 1 = a single device)")
    p.add_argument("--no-single-device", action="store_true",
                   help="skip the one-device JAX contender (run when there are several)")
    p.add_argument("--channels-last", action="store_true",
                   help="torch peer in channels-last memory format (slower on our CPU)")
    return p.parse_args(argv)


class JaxContender:
    def __init__(self, config, *, devices=None, name="jax"):
        self.name = name
        self.bench = common.StepBench(config, common.synthetic_info(config), devices=devices)
        self.batches = self.bench.device_batches(4)
        t0 = time.perf_counter()
        self.compiled = self.bench.compiled(self.batches[0])
        self.compile_s = time.perf_counter() - t0
        self.flops_per_step = self.bench.step_flops(self.compiled)
        self.i = 0

    def step(self):
        b = self.bench
        b.state, metrics = self.compiled(b.state, self.batches[self.i % len(self.batches)])
        self.i += 1
        jax.block_until_ready((b.state, metrics))


class TorchContender:
    def __init__(self, config, *, compile: bool, channels_last: bool):
        import torch

        from bench.peers import torch_unet

        self.name = "torch_compile" if compile else "torch_eager"
        torch.manual_seed(0)
        self.peer = torch_unet.from_config(config, channels_last=channels_last, compile=compile)
        rng = np.random.default_rng(0)
        s, n = config.dataset.image_size, config.batch_size
        self.batches = [(torch.from_numpy(rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)),
                         torch.zeros(n, dtype=torch.int32)) for _ in range(4)]
        self.i = 0
        self.compile_s = None
        if compile:  # the first call compiles
            t0 = time.perf_counter()
            self.step()
            self.compile_s = time.perf_counter() - t0

    def step(self):
        self.peer.step(*self.batches[self.i % len(self.batches)])
        self.i += 1

    def count_flops(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.step()
        return float(counter.get_total_flops())


def main(argv=None) -> dict:
    args = parse_args(argv)
    config = common.load_config(args.config)
    if args.batch:
        config.batch_size = args.batch
    if args.dtype:
        config.dtype = args.dtype
    if args.cpu_devices is not None:
        config.parallel.cpu_devices = args.cpu_devices
    from mtlgen_jax import cpu_devices

    cpu_devices.configure(config)  # as launch.py does (before JAX starts its backend)
    if config.dtype != "float32" and not args.no_torch:
        print(f"dtype {config.dtype}: the float32 torch peer is skipped (not comparable)")
        args.no_torch = True
    batch = config.batch_size
    print(f"config {args.config}: batch {batch}, {config.dataset.image_size}px, "
          f"tasks {config.tasks.names}, width {config.model.width}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} CPUs")

    peak_before = common.matmul_flops_per_sec(args.matmul)
    jx = JaxContender(config)
    print(f"jax: {jx.bench.num_params:,} params, compile {jx.compile_s:.1f}s, "
          f"{(jx.flops_per_step or 0) / 1e9:.2f} GFLOP/step (XLA cost analysis)")
    contenders = [jx]
    if jax.device_count() > 1 and not args.no_single_device:
        # The same step on one of the CPU devices: what the split into devices buys.
        contenders.append(JaxContender(config, devices=jax.devices()[:1], name="jax_1dev"))
    torch_info = {}
    if not args.no_torch:
        import torch

        torch.set_num_threads(os.cpu_count())
        eager = TorchContender(config, compile=False, channels_last=args.channels_last)
        if eager.peer.num_params != jx.bench.num_params:
            raise AssertionError(
                f"torch peer has {eager.peer.num_params:,} parameters, the JAX model "
                f"{jx.bench.num_params:,}: the peer is not the same model")
        contenders.append(eager)
        torch_info = {"torch_num_params": eager.peer.num_params,
                      "torch_threads": torch.get_num_threads(),
                      "torch_channels_last": args.channels_last,
                      "torch_flops_per_step": eager.count_flops(),
                      "torch_notes": TORCH_NOTES}
        if not args.no_torch_compile:
            try:
                compiled = TorchContender(config, compile=True, channels_last=args.channels_last)
                contenders.append(compiled)
                torch_info["torch_compile_time_s"] = compiled.compile_s
                print(f"torch.compile: first step {compiled.compile_s:.1f}s")
            except Exception as e:  # noqa: BLE001 - report, keep the other numbers
                torch_info["torch_compile_error"] = f"{type(e).__name__}: {e}"[:2000]
                print(f"torch.compile failed: {torch_info['torch_compile_error'][:300]}")

    for c in contenders:
        for _ in range(args.warmup):
            c.step()
    times = {c.name: [] for c in contenders}
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for c in contenders:
            for _ in range(per_round):
                t0 = time.perf_counter()
                c.step()
                times[c.name].append(time.perf_counter() - t0)
    peak_after = common.matmul_flops_per_sec(args.matmul)

    st = {name: common.stats(ts) for name, ts in times.items()}
    ips = {name: batch / s["median_s"] for name, s in st.items()}
    peak = max(peak_before["flops_per_sec"], peak_after["flops_per_sec"])
    flops_per_sec = (jx.flops_per_step / st["jax"]["median_s"]) if jx.flops_per_step else None
    result = {
        "images_per_sec": ips["jax"],
        "flops_per_sec": flops_per_sec,
        "matmul_flops_per_sec": peak,
        "jax_single_device_images_per_sec": ips.get("jax_1dev"),
        "jax_devices_over_single_device": common.ratio(ips["jax"], ips.get("jax_1dev")),
        "torch_eager_images_per_sec": ips.get("torch_eager"),
        "torch_compile_images_per_sec": ips.get("torch_compile"),
        "fraction_of_matmul_peak": common.ratio(flops_per_sec, peak),
        "jax_over_torch_eager": common.ratio(ips["jax"], ips.get("torch_eager")),
        "jax_over_torch_compile": common.ratio(ips["jax"], ips.get("torch_compile")),
        "batch_size": batch,
        "jax_devices": jax.device_count(),
        "image_size": config.dataset.image_size,
        "dtype": config.dtype,
        "tasks": str(config.tasks.names),
        "num_params": jx.bench.num_params,
        "flops_per_step": jx.flops_per_step,
        "flops_per_image": common.ratio(jx.flops_per_step, batch),
        "jax_compile_time_s": jx.compile_s,
        "step_time_s": st,
        "matmul": {"before": peak_before, "after": peak_after},
        "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
        "config": args.config,
        "jax_threads": os.cpu_count(),  # XLA:CPU's default intra-op pool: one thread per CPU
        **torch_info,
    }

    rows = []
    for name in times:
        s = st[name]
        fl = jx.flops_per_step if name.startswith("jax") else torch_info.get("torch_flops_per_step")
        rows.append([name, ips[name], s["median_s"], s["min_s"], s["max_s"],
                     fl / s["median_s"] / 1e9 if fl else None,
                     ips[name] / ips["jax"]])
    common.print_table(rows, ["impl", "images/s", "median s", "min s", "max s", "GFLOP/s",
                              "vs jax"], title=f"train step, batch {batch}")
    print(f"matmul {args.matmul}^3 f32: {peak / 1e9:.1f} GFLOP/s (before "
          f"{peak_before['flops_per_sec'] / 1e9:.1f}, "
          f"after {peak_after['flops_per_sec'] / 1e9:.1f}); the step reaches "
          f"{100 * (result['fraction_of_matmul_peak'] or 0):.1f}% of it")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
