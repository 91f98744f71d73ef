"""Sampling throughput: images/s of DDIM (50 steps, batch 64) for one restoration task.

    python bench/sampling.py [--json PATH] [--task super_resolve] [--batch 64] [--steps 50]
    python bench/sampling.py --objectives diffusion,diffusion-residual,regression-residual,bridge \
        --steps_list 1,4,25 [--json PATH]

The second form times every objective of ``mtlgen_jax.experiments.objectives`` at each
step count (regression: one pass), interleaved in one process.

Uses the library's ``sampling.Sampler`` (one jitted ``lax.fori_loop`` over the
diffusion steps) with the default config's model at its RANDOM initialisation:
the speed of a sampler does not depend on what the weights are, so no
checkpoint is needed. The condition is the task's own ``degrade`` of random
images. The first call compiles (its time is reported separately); then
``--repeats`` timed calls. Achieved FLOP/s uses XLA's cost analysis of one
model call at this batch, times the number of steps.
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


def objectives_table(args) -> dict:
    """images/s of each objective at each step count (same model, batch and task)."""
    from mtlgen_jax import components
    from mtlgen_jax.experiments import objectives as objx
    from mtlgen_jax.sampling import Sampler

    base = common.load_config(args.config)
    info = common.synthetic_info(base)
    key = jax.random.key(1)
    s, c = info.image_size, info.channels
    clean = jax.random.uniform(key, (args.batch, s, s, c), minval=-1.0, maxval=1.0)
    labels = jnp.zeros((args.batch,), jnp.int32)
    steps_list = [int(x) for x in args.steps_list.split(",")]
    rows, out = [], {}
    for name in args.objectives.split(","):
        comp = components.build(objx.objective_config(base, name), info)
        task = comp.tasks[comp.task_index(args.task)]
        params = jax.jit(lambda k, comp=comp: components.init_params(comp.model, info, k))(key)
        cond = jax.jit(task.degrade)(clean, key)
        sampler = Sampler(comp)
        for steps in objx.steps_for(name, steps_list):
            def sample(sampler=sampler, params=params, cond=cond, steps=steps):
                return sampler(params, args.task, cond, labels, key, steps=steps)

            jax.block_until_ready(sample())  # compile
            median = sorted(common.time_fn(sample, warmup=0, repeats=max(args.repeats, 3)))[1]
            out[f"{name}/{steps}"] = {"images_per_sec": args.batch / median, "steps": steps,
                                      "sample_time_s": median}
            rows.append([name, steps, args.batch / median, median])
    common.print_table(rows, ["objective", "steps", "images/s", "s / batch"],
                       title=f"sampling by objective, {args.task}, batch {args.batch}")
    result = {"task": args.task, "batch": args.batch, "config": args.config, "objectives": out}
    common.write_json(args.json, result)
    return result


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--config", default="default")
    p.add_argument("--task", default="super_resolve", help="a task of the config")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    p.add_argument("--repeats", type=int, default=1, help="timed calls after the first")
    p.add_argument("--objectives", default="", help="time these objectives (comma-separated)")
    p.add_argument("--steps_list", default="1,4,25", help="with --objectives: step counts")
    args = p.parse_args(argv)
    if args.objectives:
        return objectives_table(args)

    from mtlgen_jax import components
    from mtlgen_jax.sampling import Sampler

    config = common.load_config(args.config)
    info = common.synthetic_info(config)
    comp = components.build(config, info)
    if args.task not in comp.task_names:
        raise SystemExit(f"--task {args.task!r} is not one of {comp.task_names}")
    task = comp.tasks[comp.task_names.index(args.task)]
    params = jax.jit(lambda k: components.init_params(comp.model, info, k))(jax.random.key(0))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    key = jax.random.key(1)
    s, c = info.image_size, info.channels
    clean = jax.random.uniform(key, (args.batch, s, s, c), minval=-1.0, maxval=1.0)
    cond = jax.jit(task.degrade)(clean, key)
    labels = jnp.zeros((args.batch,), jnp.int32)
    sampler = Sampler(comp)

    def sample():
        return sampler(params, args.task, cond, labels, key, steps=args.steps,
                       sampler=args.sampler)

    t0 = time.perf_counter()
    jax.block_until_ready(sample())
    first = time.perf_counter() - t0
    times = common.time_fn(sample, warmup=0, repeats=args.repeats)
    median = sorted(times)[len(times) // 2]

    # FLOPs of one model call at this batch (what every sampler step runs once).
    t_vec = jnp.ones((args.batch,), jnp.float32)
    task_id = jnp.full((args.batch,), comp.task_names.index(args.task), jnp.int32)
    model_call = jax.jit(lambda p, x: comp.model.apply({"params": p}, x, cond, t_vec, task_id,
                                                      labels))
    call_flops = common.cost_flops(model_call.lower(params, clean).compile())
    flops = call_flops * args.steps if call_flops else None
    result = {
        "images_per_sec": args.batch / median,
        "sample_time_s": median,
        "first_call_s": first,
        "compile_s_estimate": first - median,
        "sampler": args.sampler, "steps": args.steps, "batch": args.batch, "task": args.task,
        "model_calls_per_sec": args.steps / median,
        "flops_per_sample_call": flops,
        "flops_per_sec": flops / median if flops else None,
        "num_params": n_params,
        "weights": "random initialisation (speed does not depend on the weights)",
        "times_s": times,
        "config": args.config,
    }
    common.print_table(
        [[f"{args.sampler} {args.steps} steps, {args.task}", args.batch, result["images_per_sec"],
          median, first, (result["flops_per_sec"] or 0) / 1e9]],
        ["sampler", "batch", "images/s", "s / batch", "first call s", "GFLOP/s"],
        title=f"sampling ({n_params:,} params, random init)")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
