"""XLA:CPU flags vs. the default train step: images/s of each flag set, as a ratio to the default.

    python bench/xla_flags.py [--json PATH] [--steps 6] [--only NAME,NAME]

Each flag set runs ``bench/train_step.py --no-torch`` in its own process
(XLA_FLAGS must be set before JAX starts), so every variant compiles the step
again (~20-45 s on a 2-core host). Processes cannot interleave steps, so each
variant is bracketed by default runs (default, A, default, B, default, ...)
and compared with the mean of the two defaults around it; the default runs
reuse a persistent compilation cache (a temporary directory) so they cost
only their timing. The spread of all default runs is printed: ratios inside
it are noise. ~8-10 minutes on a 2-core host; ``--only`` picks variants.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # noqa: E402

VARIANTS = {
    "default": "",
    # Convolutions and dots through XLA's own (Eigen) kernels instead of YNNPACK fusions.
    "no_ynnpack": "--xla_cpu_experimental_ynn_fusion_type=",
    # YNNPACK also for elementwise and reduction fusions.
    "ynn_all": "--xla_cpu_experimental_ynn_fusion_type="
               "individual_convolution,individual_dot,eltwise,reduce",
    "eigen_single_thread": "--xla_cpu_multi_thread_eigen=false",
    "concurrency_scheduler":
        "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED",
    # Changes rounding (no NaN/Inf guarantees): listed to show what it would buy.
    "fast_math": "--xla_cpu_enable_fast_math=true",
    # Fast math but NaN/Inf kept (the step's non-finite checks must keep working).
    "fast_math_keep_nan_inf": "--xla_cpu_enable_fast_math=true "
                              "--xla_cpu_fast_math_honor_nans=true "
                              "--xla_cpu_fast_math_honor_infs=true",
    # Data parallel over the cores: 2 CPU devices, the batch sharded over them (same numbers).
    "two_devices": "--xla_force_host_platform_device_count=2",
    "two_devices_eigen_single_thread": "--xla_force_host_platform_device_count=2 "
                                       "--xla_cpu_multi_thread_eigen=false",
    # Not a flag: config.dtype='bfloat16' (bf16 activations/compute, float32 params), for scale.
    "bfloat16": ("", ["--dtype", "bfloat16"]),
}


def run_variant(flags, steps: int, extra: list[str], cache_dir: str | None = None) -> dict:
    if isinstance(flags, tuple):  # (XLA flags, extra train_step.py arguments)
        flags, more = flags
        extra = [*extra, *more]
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
    if cache_dir:
        env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, str(Path(__file__).with_name("train_step.py")), "--no-torch",
           "--steps", str(steps), "--rounds", "1", "--json", out, *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"error": (proc.stderr or proc.stdout)[-1500:]}
    with open(out) as f:
        return json.load(f)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--only", default="", help="comma-separated variant names")
    p.add_argument("--config", default="default")
    args = p.parse_args(argv)
    names = [n for n in (args.only.split(",") if args.only else VARIANTS) if n != "default"]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {list(VARIANTS)}")

    extra = ["--config", args.config]
    cache = tempfile.mkdtemp(prefix="mtlgen_xla_cache_")

    def default_run():
        r = run_variant("", args.steps, extra, cache)
        if "images_per_sec" not in r:
            raise SystemExit(f"the default run failed: {r.get('error')}")
        print(f"  default: {r['images_per_sec']:.2f} images/s", flush=True)
        return r["images_per_sec"]

    defaults = [default_run()]
    rows, result = [], {"variants": {}, "default_images_per_sec": defaults}
    for name in names:
        r = run_variant(VARIANTS[name], args.steps, extra)
        defaults.append(default_run())
        ips = r.get("images_per_sec")
        around = (defaults[-2] + defaults[-1]) / 2
        entry = {"flags": str(VARIANTS[name]), "images_per_sec": ips,
                 "default_around": [defaults[-2], defaults[-1]],
                 "ratio_vs_default": common.ratio(ips, around),
                 "compile_s": r.get("jax_compile_time_s"),
                 "step_median_s": (r.get("step_time_s") or {}).get("jax", {}).get("median_s"),
                 "error": r.get("error")}
        result["variants"][name] = entry
        print(f"{name}: {ips} images/s, x{entry['ratio_vs_default'] or 0:.3f}", flush=True)
        rows.append([name, ips, around, entry["ratio_vs_default"], entry["compile_s"],
                     entry["flags"] if not r.get("error") else "ERROR " + r["error"][-80:]])
    rows.sort(key=lambda r: -(r[3] or 0))
    common.print_table(rows, ["variant", "images/s", "default around", "ratio", "compile s",
                              "XLA_FLAGS"],
                       title="train step under XLA:CPU flags (each its own process)")
    mean = sum(defaults) / len(defaults)
    spread = (max(defaults) - min(defaults)) / mean
    result["default_spread"] = spread
    print(f"default runs: {', '.join(f'{d:.1f}' for d in defaults)} images/s "
          f"(spread {spread:.1%} of their mean; ratios within that are noise)")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
