"""Compilations of the train step over a run, first-step vs steady-state time, sampler compile time.

    python bench/compile.py [--json PATH] [--steps 6] [--sample-batch 16] [--sample-steps 50]

Runs the default config's train step the way ``train.py`` does (a fresh host
batch placed with ``Parallel.shard_batch`` every step, the state donated, the
metrics read back to the host every few steps) and counts XLA compilations
with ``jax.monitoring`` (one ``backend_compile`` event per real compilation)
and with the jitted step's own cache size (``step._cache_size()``). A healthy
run compiles the step once. Also: how the first step's time splits into
tracing, lowering to StableHLO and XLA compilation (the same monitoring events),
and the compile time of the DDIM sampler (``sampling.Sampler``, 50 steps) for one task.
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

EVENTS = {
    "trace_s": "/jax/core/compile/jaxpr_trace_duration",
    "lower_s": "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "compile_s": "/jax/core/compile/backend_compile_duration",
}


class Events:
    """All jax.monitoring duration events, for splitting a first call's time."""

    def __init__(self):
        self.log: list[tuple[str, str, float]] = []
        jax.monitoring.register_event_duration_secs_listener(
            lambda event, secs, **kw: self.log.append((event, str(kw.get("fun_name", "?")), secs)))

    def mark(self) -> int:
        return len(self.log)

    def summary(self, since: int) -> dict:
        out = {key: sum(s for e, _, s in self.log[since:] if e == ev) for key, ev in EVENTS.items()}
        out["compiles"] = [(n, s) for e, n, s in self.log[since:] if e == EVENTS["compile_s"]]
        return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--config", default="default")
    p.add_argument("--steps", type=int, default=6, help="train steps of the run")
    p.add_argument("--sample-task", default="super_resolve")
    p.add_argument("--sample-batch", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--no-sampler", action="store_true")
    args = p.parse_args(argv)

    events = Events()
    config = common.load_config(args.config)
    bench = common.StepBench(config, common.synthetic_info(config))
    par = bench.par

    # --- the train loop, as train.py runs it ------------------------------------------
    times, metrics = [], None
    mark_run = events.mark()
    for i in range(args.steps):
        t0 = time.perf_counter()
        batch = par.shard_batch(bench.host_batch_np(i))
        bench.state, metrics = bench.step(bench.state, batch)
        jax.block_until_ready((bench.state, metrics))
        times.append(time.perf_counter() - t0)
        if i == 0:
            first = events.summary(mark_run)
            mark_after_first = events.mark()
        if i % 2 == 1:
            par.metrics_to_host({"loss": metrics["loss"]})  # the loop's periodic host read
    later = events.summary(mark_after_first)
    is_step = lambda name: "train_step" in name  # noqa: E731 - jit(train_step)
    step_compiles = sum(is_step(n) for n, _ in first["compiles"] + later["compiles"])
    step_recompiles = sum(is_step(n) for n, _ in later["compiles"])
    cache_size = bench.step._cache_size() if hasattr(bench.step, "_cache_size") else None
    steady = common.stats(times[1:]) if len(times) > 1 else None

    result = {
        "config": args.config,
        "batch_size": config.batch_size,
        "train_steps_run": args.steps,
        "compilations_total": step_compiles,
        "compilations_after_first_step": step_recompiles,
        "compiled_functions": first["compiles"] + later["compiles"],  # (name, XLA seconds)
        "step_cache_size": cache_size,
        "first_step_s": times[0],
        "first_step_trace_s": first["trace_s"],
        "first_step_lower_s": first["lower_s"],
        "first_step_xla_compile_s": first["compile_s"],
        "steady_step_s": steady,
        "first_over_steady": common.ratio(times[0], steady["median_s"] if steady else None),
    }

    # --- the DDIM sampler ---------------------------------------------------------------
    if not args.no_sampler:
        from mtlgen_jax.sampling import Sampler

        comp = bench.comp
        sampler = Sampler(comp)
        task = comp.tasks[comp.task_names.index(args.sample_task)]
        params = par.unreplicate(bench.state).params
        key = jax.random.key(1)
        s, c = bench.info.image_size, bench.info.channels
        clean = jax.random.uniform(key, (args.sample_batch, s, s, c), minval=-1.0, maxval=1.0)
        cond = jax.jit(task.degrade)(clean, key)
        labels = jnp.zeros((args.sample_batch,), jnp.int32)
        mark = events.mark()
        t0 = time.perf_counter()
        jax.block_until_ready(sampler(params, args.sample_task, cond, labels, key,
                                      steps=args.sample_steps))
        first_call = time.perf_counter() - t0
        ev = events.summary(mark)
        t0 = time.perf_counter()
        jax.block_until_ready(sampler(params, args.sample_task, cond, labels, key,
                                      steps=args.sample_steps))
        second_call = time.perf_counter() - t0
        result.update({
            "sampler": f"ddim, {args.sample_steps} steps, task {args.sample_task}, "
                       f"batch {args.sample_batch}",
            "sampler_trace_s": ev["trace_s"], "sampler_lower_s": ev["lower_s"],
            "sampler_xla_compile_s": ev["compile_s"],
            "sampler_compile_total_s": ev["trace_s"] + ev["lower_s"] + ev["compile_s"],
            "sampler_first_call_s": first_call, "sampler_second_call_s": second_call,
            "sampler_compiled_functions": ev["compiles"],
        })

    rows = [["train step compilations in the run", step_compiles],
            ["  of which after the first step", step_recompiles],
            ["other compilations in the loop", len(first["compiles"]) + len(later["compiles"])
             - step_compiles],
            ["step._cache_size()", cache_size],
            ["first step s (trace + lower + compile + run)", times[0]],
            ["  trace s", first["trace_s"]], ["  lower s", first["lower_s"]],
            ["  XLA compile s", first["compile_s"]],
            ["steady step s (median)", steady["median_s"] if steady else None],
            ["first / steady", result["first_over_steady"]]]
    if not args.no_sampler:
        rows += [[f"sampler compile s ({result['sampler']})", result["sampler_compile_total_s"]],
                 ["  of which XLA compile s", result["sampler_xla_compile_s"]],
                 ["sampler first call s", result["sampler_first_call_s"]],
                 ["sampler second call s", result["sampler_second_call_s"]]]
    common.print_table(rows, ["measure", "value"], title="compilation")
    if step_compiles != 1 or (cache_size is not None and cache_size != 1):
        print("WARNING: the train step compiled more than once: "
              f"{first['compiles'] + later['compiles']}")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
