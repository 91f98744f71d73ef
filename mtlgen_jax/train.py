"""The training loop: build, restore, train, log, checkpoint, evaluate.

``train_and_evaluate(config, workdir)`` is what ``launch.py`` calls; it is
importable and usable from a notebook too.
"""

from __future__ import annotations

import functools
import math
import time

import jax
import ml_collections
from absl import logging
from tqdm import tqdm

from mtlgen_jax import components, data, evaluate, parallel
from mtlgen_jax import workdir as workdir_lib
from mtlgen_jax.checkpoint import Checkpointer
from mtlgen_jax.sampling import Sampler
from mtlgen_jax.step import TrainState, train_step
from mtlgen_jax.writers import MetricWriter


def check_finite(step: int, metrics: dict[str, float]) -> None:
    """Halts on a non-finite loss or gradient, naming the step and the task."""
    bad = [k for k, v in metrics.items()
           if (k.startswith("loss") or k == "grad_norm") and not math.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"non-finite values at step {step}: {', '.join(f'{k}={metrics[k]}' for k in bad)}. "
            "The last good checkpoint is kept; lower learning_rate or check the data."
        )


class Trainer:
    """Holds a run's pieces; ``run()`` trains to ``config.num_train_steps``."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        self.info = data.get_info(config.dataset)
        self.comp = components.build(config, self.info)
        self.par = parallel.Parallel(config.parallel.backend)
        self.host_batch, _ = parallel.check_batch(config.batch_size)
        self.is_main = jax.process_index() == 0
        self.ckpt = Checkpointer(workdir, every=config.checkpoint_every_steps,
                                 keep=config.keep_checkpoints)
        workdir_lib.prepare(workdir, config, has_checkpoint=self.ckpt.latest_step() is not None,
                            write=self.is_main)
        self.init_fn = functools.partial(components.init_state, self.comp, config.seed)
        self.step_fn = self.par.wrap(functools.partial(train_step, self.comp.step_config(config)))
        self.sampler = Sampler(self.comp, config.diffusion.prediction,
                               in_sharding=None if self.par.backend == "pmap"
                               else self.par.batch_sharding)

    # --- state --------------------------------------------------------------------------
    def initial_state(self) -> tuple[TrainState, int]:
        """The latest checkpoint's state, or a fresh one; and the data position."""
        latest = self.ckpt.latest_step()
        if latest is None:
            return self.par.init_state(self.init_fn), 0
        abstract = jax.eval_shape(self.init_fn)
        state, meta = self.ckpt.restore(latest, self.par.abstract_state(abstract))
        if self.par.backend == "pmap":
            state = self.par.replicate(state)
        logging.info("resumed from step %d in %s", latest, self.workdir)
        return state, int(meta.get("data_position", latest))

    def save(self, step: int, state: TrainState, data_position: int, *, force: bool = False):
        meta = {"data_position": data_position, "batch_size": self.config.batch_size,
                "num_devices": self.par.num_devices, "tasks": list(self.comp.task_names)}
        return self.ckpt.save(step, self.par.unreplicate(state), meta, force=force)

    # --- loop ---------------------------------------------------------------------------
    def run(self) -> TrainState:
        cfg = self.config
        state, position = self.initial_state()
        start = int(jax.device_get(self.par.unreplicate(state).step))
        train_iter = data.create_iterator(cfg.dataset, cfg.dataset.train_split,
                                          batch_size=self.host_batch, seed=cfg.seed,
                                          start_batch=position)
        writer = MetricWriter(self.workdir)
        bar = tqdm(total=cfg.num_train_steps, initial=start, disable=not self.is_main,
                   dynamic_ncols=True, desc="train")
        pending = None  # (step, device metrics, time): logged one step later (no host sync)
        t_log, n_log = time.perf_counter(), 0
        try:
            for step in range(start, cfg.num_train_steps):
                batch = self.par.shard_batch(next(train_iter))
                state, metrics = self.step_fn(state, batch)
                position += 1
                n_log += 1
                if pending is not None:
                    self._log(writer, bar, *pending)
                    pending = None
                done = step + 1
                if done % cfg.log_every_steps == 0 or done == cfg.num_train_steps:
                    now = time.perf_counter()
                    rate = n_log * cfg.batch_size / (now - t_log)
                    pending = (done, metrics, rate)
                    t_log, n_log = now, 0
                bar.update(1)
                if done % cfg.checkpoint_every_steps == 0 and done != cfg.num_train_steps:
                    self.save(done, state, position)
                if done % cfg.eval_every_steps == 0 or done == cfg.num_train_steps:
                    if pending is not None:
                        self._log(writer, bar, *pending)
                        pending = None
                    self.evaluate(state, done, writer, final=done == cfg.num_train_steps)
            if pending is not None:
                self._log(writer, bar, *pending)
            final = int(jax.device_get(self.par.unreplicate(state).step))
            if final not in self.ckpt.all_steps():
                self.save(final, state, position, force=True)
            self.ckpt.wait()
        finally:
            bar.close()
            writer.close()
            self.ckpt.close()
        return state

    def _log(self, writer: MetricWriter, bar, step: int, metrics, rate: float) -> None:
        host = self.par.metrics_to_host(metrics)
        check_finite(step, host)
        host["images_per_sec"] = rate
        writer.write(step, host)
        bar.set_postfix(loss=f"{host['loss']:.4f}", img_s=f"{rate:.0f}")

    def evaluate(self, state: TrainState, step: int, writer: MetricWriter, *, final: bool):
        """Metrics on the test split and PNG grids, with the EMA parameters."""
        cfg = self.config
        params = self.par.unreplicate(state).ema_params
        if self.par.backend == "pmap":
            params = jax.device_get(params)
        t0 = time.perf_counter()
        results = evaluate.evaluate(
            self.comp, self.sampler, params, cfg,
            num_batches=cfg.eval.num_batches if final else cfg.eval.num_batches_during_training,
            grid_dir=self.workdir if self.is_main else None, step=step,
            shard=None if self.par.backend == "pmap" else self.par.shard_batch)
        if self.is_main:
            writer.write(step, results)
            logging.info("eval at step %d (%.1fs):\n%s", step, time.perf_counter() - t0,
                         evaluate.format_table(results))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (resuming from ``workdir``'s latest checkpoint if any) and evaluates."""
    return Trainer(config, workdir).run()
