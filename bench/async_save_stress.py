"""Stress reproducer for asynchronous checkpoint saves (issue: an async orbax save that
overlapped other work died with ENOENT inside ``<step>.orbax-checkpoint-tmp``).

Each iteration trains nothing: it saves a small train-state-like pytree at EVERY step
with ``Checkpointer(every=1, keep=2, async_save=True)`` (so ``max_to_keep`` deletes an
old step while the next one is written), while

* a thread compiles and runs fresh XLA programs (as an evaluation does mid-run),
* the CPU is loaded by a busy process per core (``--load``), and
* a *reader* opens the same checkpoint directory every few steps, as a notebook's
  ``mtlgen_jax.restore(workdir)`` watching a live run does (``--reader``):
  ``readonly`` is the reader the package uses (``Checkpointer(read_only=True)``);
  ``cleanup`` reproduces the reader before the fix, an orbax manager with
  ``cleanup_tmp_directories=True``, which deletes any ``*.orbax-checkpoint-tmp`` it
  finds -- including the trainer's save in flight; ``none`` runs no reader.

After the loop every kept step must restore and equal what was saved. Prints how many
iterations ran clean.

    python bench/async_save_stress.py --iterations 20 --reader cleanup   # fails
    python bench/async_save_stress.py --iterations 20 --reader readonly  # clean
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _burn(stop):
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


def _compile_load(stop, errors):
    import jax
    import jax.numpy as jnp

    i = 0
    try:
        while not stop.is_set():
            i += 1
            n = 64 + (i % 7) * 8  # a new shape: a new compilation
            fn = jax.jit(lambda a, k=i: jnp.tanh(a @ a.T + k).sum())
            fn(jnp.ones((n, n))).block_until_ready()
    except Exception as e:  # noqa: BLE001 -- reported, not hidden
        errors.append(f"compile thread: {e!r}")


def one_iteration(root: str, steps: int, reader: str, seed: int) -> str | None:
    """None when clean, else the error text."""
    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from mtlgen_jax.checkpoint import Checkpointer

    workdir = os.path.join(root, f"it{seed}")
    rng = np.random.default_rng(seed)
    saved = {}
    stop, errors = threading.Event(), []
    loader = threading.Thread(target=_compile_load, args=(stop, errors), daemon=True)
    loader.start()
    ckpt = Checkpointer(workdir, every=1, keep=2, async_save=True)
    try:
        for step in range(1, steps + 1):
            state = {"params": {f"w{i}": rng.standard_normal((64, 256)).astype(np.float32)
                                for i in range(8)}, "step": np.int32(step)}
            ckpt.save(step, jax.tree.map(jax.numpy.asarray, state), {"data_position": step})
            saved[step] = state
            if reader != "none" and step % 3 == 0:
                if reader == "cleanup":  # the reader before the fix
                    m = ocp.CheckpointManager(ckpt.directory, options=ocp.CheckpointManagerOptions(
                        cleanup_tmp_directories=True, enable_async_checkpointing=False),
                        item_names=("state", "meta"))
                    m.all_steps()
                    m.close()
                else:
                    r = Checkpointer(workdir, async_save=False, read_only=True)
                    r.all_steps()
                    r.close()
        ckpt.wait()
        kept = ckpt.all_steps()
        if kept != [steps - 1, steps]:
            return f"kept steps {kept}, expected {[steps - 1, steps]}"
        for step in kept:
            abstract = jax.tree.map(
                lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), saved[step])
            state, meta = ckpt.restore(step, abstract)
            if int(meta["data_position"]) != step:
                return f"step {step}: meta {meta}"
            for k, v in saved[step]["params"].items():
                if not np.array_equal(np.asarray(state["params"][k]), v):
                    return f"step {step}: {k} differs after restore"
        return errors[0] if errors else None
    except Exception:  # noqa: BLE001 -- counted and printed
        return traceback.format_exc(limit=3)
    finally:
        stop.set()
        loader.join(timeout=60)
        try:
            ckpt.close()
        except Exception:  # noqa: BLE001
            pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--steps", type=int, default=30, help="saves per iteration")
    p.add_argument("--reader", choices=("none", "cleanup", "readonly"), default="readonly")
    p.add_argument("--load", type=int, default=os.cpu_count() or 1,
                   help="busy processes loading the CPU")
    p.add_argument("--json", default="")
    args = p.parse_args()
    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()
    root = tempfile.mkdtemp(prefix="async_save_stress_")
    failures = []
    t0 = time.time()
    try:
        for i in range(args.iterations):
            err = one_iteration(root, args.steps, args.reader, i)
            print(f"iteration {i}: {'clean' if err is None else 'FAILED'}", flush=True)
            if err is not None:
                failures.append(err)
                print(err, flush=True)
    finally:
        stop.set()
        shutil.rmtree(root, ignore_errors=True)
    result = {"reader": args.reader, "iterations": args.iterations, "saves_per_iteration":
              args.steps, "clean": args.iterations - len(failures), "failed": len(failures),
              "seconds": round(time.time() - t0, 1), "load_processes": args.load}
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(result, first_errors=failures[:3]), f, indent=1)


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
