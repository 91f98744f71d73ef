"""Runs a few train steps of a tiny model on synthetic data; prints losses/params as JSON.

Used by tests/test_parallel.py in subprocesses, since the device count
(XLA_FLAGS=--xla_force_host_platform_device_count) must be set before JAX starts.

    python tests/_multidevice.py --devices N --backend shard_map|pmap --weighting ew[,mgda,...]
        [--process_id I --num_processes P --port PORT] [--dtype bfloat16] [--steps S]

`--weighting` takes comma-separated strategies (a name ending in "-ub": that gradient
method in representation mode); each runs `--steps` steps from the same initial state.
The printed JSON has one entry per strategy under "runs".
"""

import argparse
import json
import os
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--devices", type=int, default=1)  # devices per process
parser.add_argument("--backend", default="shard_map")
parser.add_argument("--weighting", default="ew")
parser.add_argument("--dtype", default="float32")
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--batch", type=int, default=16)
parser.add_argument("--process_id", type=int, default=0)
parser.add_argument("--num_processes", type=int, default=1)
parser.add_argument("--port", type=int, default=0)
parser.add_argument("--lr", type=float, default=2e-3)
parser.add_argument("--accum", type=int, default=1)
parser.add_argument("--memory", action="store_true")  # also compile for memory_analysis
parser.add_argument("--small", action="store_true")  # one-level U-Net, 8x8: cheap compiles
parser.add_argument("--preemption_dir", default="")  # also ask Checkpointer.reached_preemption
args = parser.parse_args()

# Several of these run at once on a 2-core test machine: a device thread can be starved
# past XLA's 40 s collective rendezvous timeout, which then aborts the process
# (10 minutes here, as cpu_devices.COLLECTIVE_TIMEOUT_S).
os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={args.devices} "
                           "--xla_cpu_collective_call_terminate_timeout_seconds=600")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)
if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{args.port}", args.num_processes, args.process_id)

import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from mtlgen_jax import components, weighting  # noqa: E402
from mtlgen_jax.checkpoint import Checkpointer  # noqa: E402
from mtlgen_jax.data import DatasetInfo  # noqa: E402

INITIAL = []  # the initial TrainState on the host, from the first strategy


def to_host(x):
    """One replica of a replicated value, as numpy (also multi-process)."""
    return np.asarray(x.addressable_data(0) if hasattr(x, "addressable_data") else x)


def run(spec: str) -> dict:
    name, grad_space = weighting.parse_spec(spec)
    cfg = default.get_config("tiny")
    cfg.batch_size = args.batch
    cfg.weighting.name = name
    cfg.weighting.grad_space = grad_space
    if name == "mgda":
        cfg.weighting.hparams = "num_iters=50"  # also exercises the hparams string
    if name == "static":
        cfg.weighting.hparams = "weights=(1.0,2.0,0.5,1.0)"
    cfg.dtype = args.dtype
    cfg.learning_rate = args.lr
    # Adam's first steps are ~lr * sign(g): gradients near 0 would flip with the order of
    # the device sum. A large eps keeps the update smooth in g, so runs compare closely.
    cfg.adam_eps = 1e-3
    cfg.grad_accum_steps = args.accum
    cfg.num_train_steps = 100
    cfg.tasks.names = "denoise,inpaint,super_resolve,colorize"
    for name in ("denoise", "inpaint", "super_resolve", "colorize"):
        # Palette diffusion on every task: heads that start non-zero (the default's
        # residual and bridge heads start at zero), so every strategy's weights differ
        # from the first step. The objectives' own 1 = 8 devices test: test_parallel's
        # sampling check; the default objectives run on 2 devices in test_reliability.
        cfg.tasks[name] = default.with_objective(cfg.tasks[name], "diffusion", residual=False,
                                                  loss="l2")
    size = 16
    if args.small:
        size = cfg.dataset.image_size = 8
        cfg.model.channel_mult, cfg.model.attn_resolutions = (1,), ()
    info = DatasetInfo(name="synthetic", num_classes=None, channels=3, image_size=size,
                       num_train=64, num_test=8, train_split="train", test_split="test")
    parts = components.build_run(cfg, info, backend=args.backend)
    comp, par, host_batch, step = parts.comp, parts.par, parts.host_batch, parts.step_fn
    if not INITIAL:  # the model's init compiles once; every strategy starts from it
        state = par.init_state(parts.init_fn)
        INITIAL.append(jax.tree.map(to_host, par.unreplicate(state)))
    else:
        state = par.replicate(INITIAL[0].replace(weighting_state=comp.strategy.init()))

    rng = np.random.default_rng(0)
    losses, weights = [], []
    for _ in range(args.steps):
        images = rng.integers(0, 256, (cfg.batch_size, size, size, 3), dtype=np.uint8)
        labels = np.zeros((cfg.batch_size,), np.int32)
        lo = args.process_id * host_batch
        local = {"image": images[lo:lo + host_batch], "label": labels[lo:lo + host_batch]}
        state, metrics = step(state, par.shard_batch(local))
        host = par.metrics_to_host(metrics)
        losses.append([host[f"loss/{t}"] for t in comp.task_names])
        weights.append([host[f"weight/{t}"] for t in comp.task_names])

    # Replicated params: every process holds a full copy on its own devices.
    final = jax.tree.map(to_host, par.unreplicate(state).params)
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(final)])
    compiled = step.lower(state, par.shard_batch(local)).compile() \
        if args.memory and spec == SPECS[0] else None
    mem = compiled.memory_analysis() if compiled is not None else None
    return {
        "losses": losses,
        "weights": weights,
        "params_head": flat[:2000].tolist(),
        "params_sum": float(np.sum(flat.astype(np.float64))),
        "params_abs": float(np.sum(np.abs(flat.astype(np.float64)))),
        "cache_size": step._cache_size() if hasattr(step, "_cache_size") else None,
        "temp_bytes": getattr(mem, "temp_size_in_bytes", None),
        "argument_bytes": getattr(mem, "argument_size_in_bytes", None),
    }


SPECS = args.weighting.split(",")
out = {
    "runs": {spec: run(spec) for spec in SPECS},
    "devices": jax.device_count(),
    "processes": jax.process_count(),
}
if args.preemption_dir:  # orbax's preemption sync point, asked on every process at once
    ckpt = Checkpointer(os.path.join(args.preemption_dir, f"p{args.process_id}"),
                        async_save=False)
    out["reached_preemption"] = ckpt.reached_preemption(1)
    ckpt.close()
if args.process_id == 0:
    print("RESULT " + json.dumps(out))
