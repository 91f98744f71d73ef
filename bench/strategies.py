"""Cost of each weighting strategy: train-step time over ``ew``, K=4 tasks, on a small model.

    python bench/strategies.py [--json PATH] [--steps 3] [--rounds 2] [--only ew,mgda]

Every name of ``mtlgen_jax.weighting.NAMES`` with its default hyperparameters
(``static`` gets weights=[1]*K), and every gradient method again in representation
mode (``<name>-ub``: ``weighting.grad_space='representation'``). Loss weightings
need one backward pass; gradient methods need the K per-task gradients of the shared backbone (a
vmapped VJP) plus their own solve, so their ratio is mostly K backward passes
over one. The model is small (16x16 images, width 16, two levels) so the K=4
default tasks and all strategies compile and run in a few minutes on a CPU;
ratios on the default model are of the same kind (pass ``--full-model``).

Timing: each strategy's step is compiled first, then ``--rounds`` rounds each
time ``--steps`` steps of every strategy in turn; median step time.

Compilation dominates the runtime (16 compiles of ~20-35 s each, single-threaded
in XLA): they run ``--compile-threads`` at a time (default: one per CPU), and a
persistent compilation cache (``--cache-dir``, default under /tmp) makes a
second run take ~1-2 minutes. First run: ~4-5 minutes on a quiet 2-core host.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from bench import common  # noqa: E402


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--config", default="default")
    p.add_argument("--full-model", action="store_true", help="the config's own model and batch")
    p.add_argument("--steps", type=int, default=8, help="timed steps per strategy per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile-threads", type=int, default=None, help="default: one per CPU")
    p.add_argument("--cache-dir", default=f"{tempfile.gettempdir()}/mtlgen_bench_jax_cache",
                   help="persistent compilation cache ('' to disable)")
    p.add_argument("--only", default="", help="comma-separated strategies (ew is added)")
    args = p.parse_args(argv)

    if args.cache_dir:
        jax.config.update("jax_compilation_cache_dir", args.cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from mtlgen_jax import weighting

    every = list(weighting.NAMES) + [
        f"{n}-ub" for n in weighting.NAMES if weighting.create(n, 2, **(
            {"weights": [1.0, 1.0]} if n == "static" else {})).uses_task_grads]
    names = ["ew"] + [n for n in (args.only.split(",") if args.only else every)
                      if n and n != "ew"]
    runs = {}
    for name in names:
        config = common.load_config(args.config)
        if not args.full_model:
            common.small_model(config)
        base_name, config.weighting.grad_space = weighting.parse_spec(name)
        config.weighting.name = base_name
        k = len([n for n in str(config.tasks.names).split(",") if n.strip()])
        if base_name == "static":
            config.weighting.weights = [1.0] * k
        bench = common.StepBench(config, common.synthetic_info(config))
        batches = bench.device_batches(2)
        runs[name] = {"bench": bench, "batches": batches,
                      "lowered": bench.step.lower(bench.state, batches[0]),
                      "uses_task_grads": bench.comp.strategy.uses_task_grads, "times": []}

    def compile_one(name):
        t0 = time.perf_counter()
        compiled = runs[name].pop("lowered").compile()
        secs = time.perf_counter() - t0
        sys.stdout.write(f"{name}: compiled in {secs:.1f}s\n")  # one write: threads interleave
        sys.stdout.flush()
        return name, compiled, secs

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.compile_threads or os.cpu_count() or 1) as pool:
        for name, compiled, secs in pool.map(compile_one, list(runs)):
            runs[name].update(compiled=compiled, compile_s=secs,
                              flops=runs[name]["bench"].step_flops(compiled))
    compile_wall = time.perf_counter() - t0

    def step(run, i):
        b = run["bench"]
        b.state, metrics = run["compiled"](b.state, run["batches"][i % 2])
        jax.block_until_ready((b.state, metrics))

    for run in runs.values():
        step(run, 0)  # warm-up
    for _ in range(args.rounds):
        for run in runs.values():
            for i in range(args.steps):
                t0 = time.perf_counter()
                step(run, i)
                run["times"].append(time.perf_counter() - t0)

    base = statistics.median(runs["ew"]["times"])
    result = {"num_tasks": k, "batch_size": config.batch_size, "small_model": not args.full_model,
              "model": {"width": config.model.width,
                        "channel_mult": list(config.model.channel_mult),
                        "image_size": config.dataset.image_size},
              "ew_step_s": base, "compile_wall_s": compile_wall, "strategies": {}}
    rows = []
    for name, run in runs.items():
        med = statistics.median(run["times"])
        result["strategies"][name] = {
            "median_step_s": med, "ratio_vs_ew": med / base, "compile_s": run["compile_s"],
            "flops_per_step": run["flops"], "flops_ratio_vs_ew": common.ratio(run["flops"],
                                                                              runs["ew"]["flops"]),
            "uses_task_grads": run["uses_task_grads"], "step_times_s": run["times"]}
        rows.append([name, "grads" if run["uses_task_grads"] else "losses", med * 1e3, med / base,
                     result["strategies"][name]["flops_ratio_vs_ew"], run["compile_s"]])
    rows.sort(key=lambda r: r[3])
    common.print_table(rows, ["strategy", "needs", "median ms", "time / ew", "FLOPs / ew",
                              "compile s"],
                       title=f"weighting strategies, K={k}, batch {config.batch_size}, "
                             f"{'small' if not args.full_model else 'config'} model")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
