"""Is the input pipeline fast enough? photo_patches batches vs the train step.

    python bench/pipeline.py [--json PATH] [--batches 600] [--steps 12]

1. The pipeline alone: seconds per batch of ``data.create_iterator`` on the
   default dataset (photo_patches) at the default batch, over ``--batches``
   batches after the first (the first epoch also fills tf.data's cache; the
   per-batch time of the first epoch and of later ones are both reported).
   Target: at most 0.5x the train step's time.
2. The train step fed by that pipeline (``Parallel.shard_batch(next(it))``
   every step, as ``train.py`` does) vs fed synthetic batches already on the
   device, alternating one step of each. Target: real at most 1.05x synthetic.
   On a shared host the two medians move by a few percent on their own; the
   host time of ``next(it)`` + ``shard_batch`` inside the real steps (also
   reported) is the direct measure of what the real feed adds.

The dataset is prepared into ``dataset.data_dir`` on first use (as training
does); that one-off time is reported as ``prepare_s``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402

from bench import common  # noqa: E402

PIPELINE_TARGET = 0.5  # pipeline time per batch / train step time
REAL_TARGET = 1.05  # step time fed by the pipeline / step time on synthetic device data


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None)
    p.add_argument("--config", default="default")
    p.add_argument("--data-dir", default=None, help="override dataset.data_dir")
    p.add_argument("--batches", type=int, default=600, help="pipeline batches to time")
    p.add_argument("--steps", type=int, default=12, help="timed train steps per feed")
    args = p.parse_args(argv)

    from mtlgen_jax import data

    config = common.load_config(args.config)
    if args.data_dir:
        config.dataset.data_dir = args.data_dir
    t0 = time.perf_counter()
    info = data.get_info(config.dataset)
    prepare_s = time.perf_counter() - t0
    bench = common.StepBench(config, info)
    host_batch = bench.host_batch
    epoch_batches = info.num_train // host_batch

    # --- 1. the pipeline alone ---------------------------------------------------------
    it = data.create_iterator(config.dataset, "train", batch_size=host_batch, seed=config.seed)
    t0 = time.perf_counter()
    next(it)
    first_batch_s = time.perf_counter() - t0
    per_batch = []
    for _ in range(args.batches):
        t0 = time.perf_counter()
        next(it)
        per_batch.append(time.perf_counter() - t0)
    first_epoch = per_batch[: max(epoch_batches - 1, 1)]
    later = per_batch[epoch_batches - 1:]
    pipeline_s = statistics.fmean(later or first_epoch)

    # --- 2. the step: synthetic device batches vs the real pipeline ----------------------
    synthetic = bench.device_batches(4)
    real_it = data.create_iterator(config.dataset, "train", batch_size=host_batch,
                                   seed=config.seed + 1)
    compiled_t0 = time.perf_counter()
    bench.run(synthetic, 2)  # compile + warm-up
    compile_s = time.perf_counter() - compiled_t0
    for _ in range(2):  # warm the real feed (tf.data threads, first epoch's cache)
        bench.state, m = bench.step(bench.state, bench.par.shard_batch(next(real_it)))
        jax.block_until_ready((bench.state, m))
    times = {"synthetic": [], "real": []}
    feed = []  # host time of next(it) + shard_batch inside the real steps
    for i in range(args.steps):  # alternate single steps: load changes hit both feeds alike
        times["synthetic"] += bench.run(synthetic[i % len(synthetic):], 1)
        t0 = time.perf_counter()
        batch = bench.par.shard_batch(next(real_it))
        t1 = time.perf_counter()
        bench.state, m = bench.step(bench.state, batch)
        jax.block_until_ready((bench.state, m))
        times["real"].append(time.perf_counter() - t0)
        feed.append(t1 - t0)
    step_syn = statistics.median(times["synthetic"])
    step_real = statistics.median(times["real"])

    pipeline_ratio = pipeline_s / step_syn
    real_ratio = step_real / step_syn
    result = {
        "dataset": info.name,
        "batch_size": host_batch,
        "pipeline_s_per_batch": pipeline_s,
        "pipeline_s_per_batch_first_epoch": statistics.fmean(first_epoch),
        "pipeline_first_batch_s": first_batch_s,
        "pipeline_images_per_sec": host_batch / pipeline_s,
        "step_s_synthetic": step_syn,
        "step_s_real": step_real,
        "pipeline_over_step": pipeline_ratio,
        "real_over_synthetic": real_ratio,
        "feed_s_per_step": statistics.fmean(feed),
        "feed_over_step": statistics.fmean(feed) / step_syn,
        "pipeline_target": PIPELINE_TARGET,
        "real_target": REAL_TARGET,
        "pipeline_ok": pipeline_ratio <= PIPELINE_TARGET,
        "real_ok": real_ratio <= REAL_TARGET,
        "prepare_s": prepare_s,
        "step_first_calls_s": compile_s,
        "step_times_s": times,
        "epoch_batches": epoch_batches,
        "batches_timed": args.batches,
        "steps_timed": args.steps,
        "config": args.config,
    }
    common.print_table([
        ["pipeline s/batch (after the first epoch)", pipeline_s, "-"],
        ["pipeline s/batch (first epoch, fills cache)", result["pipeline_s_per_batch_first_epoch"],
         "-"],
        ["train step s (synthetic, on device)", step_syn, "-"],
        ["train step s (fed by the pipeline)", step_real, "-"],
        ["pipeline / step", pipeline_ratio,
         f"<= {PIPELINE_TARGET}: {'ok' if result['pipeline_ok'] else 'MISSED'}"],
        ["real / synthetic", real_ratio,
         f"<= {REAL_TARGET}: {'ok' if result['real_ok'] else 'MISSED'}"],
        ["host feed s/step (next + shard_batch) in the real loop", result["feed_s_per_step"], "-"],
        ["  as a fraction of the step", result["feed_over_step"], "-"],
    ], ["measure", "value", "target"], title=f"input pipeline ({info.name}, batch {host_batch})")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
