"""One prepared GPU check (H100/H200): bfloat16 train step of the CIFAR-10-sized model, MFU.

    python bench/gpu.py --json $OUT/gpu.json            # on the lent GPU: < 4 minutes
    python bench/gpu.py --smoke                          # tiny sizes, runs on a CPU

``configs/cifar10.py`` (width 128, channel_mult (1,2,2,2), 2 res blocks,
attention at 16, batch 256, 5 tasks, ~35M parameters) with
``dtype='bfloat16'`` on SYNTHETIC data (random uint8 images and labels 0-9), so
nothing is downloaded. Reports images/s, the step's FLOPs (XLA cost analysis of
the compiled step), achieved FLOP/s, and MFU = achieved FLOP/s over the FLOP/s
of a large bfloat16 matmul measured in the same run (and, for known cards,
over the datasheet's dense bf16 peak). ``--float32`` adds the same step in
float32 for comparison; ``--sampling`` adds DDIM (50 steps) of one task at the
eval batch. Each extra compiles the model again (~1 minute each).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench import common  # noqa: E402

# Dense (no sparsity) bfloat16 tensor-core peaks from NVIDIA's datasheets, FLOP/s.
NOMINAL_BF16 = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,  # SXM5 (device_kind e.g. "NVIDIA H100 80GB HBM3")
    "H200": 989e12,
    "A100": 312e12,
}


def nominal_peak(kind: str) -> float | None:
    for name, peak in NOMINAL_BF16.items():  # most specific names first
        if name in kind:
            return peak
    return None


def smoke(config) -> None:
    common.small_model(config, batch=10)
    config.eval.batch_size = 10


def measure_step(config, *, steps: int, warmup: int) -> dict:
    bench = common.StepBench(config, common.synthetic_info(config, num_classes=10))
    batches = bench.device_batches(2)
    t0 = time.perf_counter()
    compiled = bench.compiled(batches[0])
    compile_s = time.perf_counter() - t0
    flops = bench.step_flops(compiled)
    state = bench.state
    for i in range(warmup):
        state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready((state, metrics))
    # Steps dispatched back to back, one block at the end: what a training loop sees.
    t0 = time.perf_counter()
    for i in range(steps):
        state, metrics = compiled(state, batches[i % 2])
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / steps
    bench.state = state
    mem = None
    try:
        stats = jax.devices()[0].memory_stats() or {}
        mem = stats.get("peak_bytes_in_use")
    except Exception:  # noqa: BLE001 - not every backend reports memory
        pass
    loss = float(metrics["loss"])
    return {"dtype": config.dtype, "batch_size": config.batch_size, "num_params": bench.num_params,
            "compile_s": compile_s, "step_s": step_s, "images_per_sec": config.batch_size / step_s,
            "flops_per_step": flops, "flops_per_sec": flops / step_s if flops else None,
            "peak_bytes_in_use": mem, "last_loss": loss, "bench": bench}


def measure_sampling(bench, config, *, steps: int) -> dict:
    from mtlgen_jax.sampling import Sampler

    comp, task_name = bench.comp, "super_resolve"
    task = comp.tasks[comp.task_names.index(task_name)]
    n, s = config.eval.batch_size, config.dataset.image_size
    key = jax.random.key(0)
    cond = jax.jit(task.degrade)(jax.random.uniform(key, (n, s, s, 3), minval=-1, maxval=1), key)
    labels = jnp.zeros((n,), jnp.int32)
    sampler = Sampler(comp)
    params = bench.par.unreplicate(bench.state).params
    run = lambda: sampler(params, task_name, cond, labels, key, steps=steps)  # noqa: E731
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    secs = time.perf_counter() - t0
    return {"task": task_name, "steps": steps, "batch": n, "images_per_sec": n / secs,
            "first_call_s": first, "time_s": secs}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny sizes (a CPU test of this script)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30; smoke 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5; smoke 1)")
    p.add_argument("--matmul", type=int, default=None, help="matmul n (default 8192; smoke 256)")
    p.add_argument("--float32", action="store_true", help="also the float32 step")
    p.add_argument("--sampling", action="store_true", help="also DDIM sampling")
    p.add_argument("--sample-steps", type=int, default=50)
    args = p.parse_args(argv)
    steps = args.steps or (3 if args.smoke else 30)
    warmup = args.warmup or (1 if args.smoke else 5)
    n = args.matmul or (256 if args.smoke else 8192)
    dev = jax.devices()[0]
    if dev.platform != "gpu" and not args.smoke:
        print(f"WARNING: running on {dev.platform} ({dev.device_kind}), not a GPU; "
              "use --smoke on a CPU")
    t_start = time.perf_counter()

    def config_for(dtype):
        config = common.load_config("cifar10")
        config.dtype = dtype
        if args.smoke:
            smoke(config)
        return config

    mm_bf16 = common.matmul_flops_per_sec(n, jnp.bfloat16)
    mm_f32 = common.matmul_flops_per_sec(n, jnp.float32)
    print(f"{dev.device_kind}: matmul {n}^3 bf16 {mm_bf16['flops_per_sec'] / 1e12:.1f} TFLOP/s, "
          f"f32 {mm_f32['flops_per_sec'] / 1e12:.1f} TFLOP/s", flush=True)
    runs = [measure_step(config_for("bfloat16"), steps=steps, warmup=warmup)]
    print(f"bf16 step: compiled in {runs[0]['compile_s']:.1f}s, "
          f"{runs[0]['images_per_sec']:.1f} images/s", flush=True)
    if args.float32:
        runs.append(measure_step(config_for("float32"), steps=steps, warmup=warmup))
    sampling = None
    if args.sampling:
        sampling = measure_sampling(runs[0]["bench"], config_for("bfloat16"),
                                    steps=args.sample_steps)

    peak = mm_bf16["flops_per_sec"]
    nominal = nominal_peak(dev.device_kind)
    rows, result = [], {"device_kind": dev.device_kind, "smoke": args.smoke,
                        "matmul_bf16": mm_bf16, "matmul_f32": mm_f32,
                        "nominal_bf16_flops_per_sec": nominal, "runs": []}
    for r in runs:
        r.pop("bench")
        r["mfu_vs_matmul"] = common.ratio(r["flops_per_sec"], peak)
        r["mfu_vs_nominal"] = common.ratio(r["flops_per_sec"], nominal)
        result["runs"].append(r)
        rows.append([r["dtype"], r["batch_size"], r["images_per_sec"], r["step_s"] * 1e3,
                     (r["flops_per_sec"] or 0) / 1e12, r["mfu_vs_matmul"], r["mfu_vs_nominal"],
                     r["compile_s"], (r["peak_bytes_in_use"] or 0) / 2**30])
    main_run = result["runs"][0]
    result.update({"images_per_sec": main_run["images_per_sec"],
                   "flops_per_sec": main_run["flops_per_sec"],
                   "matmul_flops_per_sec": peak, "mfu": main_run["mfu_vs_matmul"],
                   "mfu_vs_nominal": main_run["mfu_vs_nominal"],
                   "num_params": main_run["num_params"], "sampling": sampling})
    common.print_table(rows, ["dtype", "batch", "images/s", "ms/step", "TFLOP/s", "MFU (matmul)",
                              "MFU (datasheet)", "compile s", "peak GiB"],
                       title=f"cifar10 config{' (SMOKE sizes)' if args.smoke else ''} "
                             f"on {dev.device_kind}, synthetic data")
    if sampling:
        print(f"sampling: ddim {sampling['steps']} steps, batch {sampling['batch']}: "
              f"{sampling['images_per_sec']:.1f} images/s "
              f"(first call {sampling['first_call_s']:.1f}s)")
    result["wall_s"] = time.perf_counter() - t_start
    print(f"total {result['wall_s']:.0f}s")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
