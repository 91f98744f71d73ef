"""The training loop: build, restore, train, log, checkpoint, evaluate.

``train_and_evaluate(config, workdir)`` is what ``launch.py`` calls; it is
importable and usable from a notebook too.
"""

from __future__ import annotations

import functools
import math
import signal
import threading
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


def _install_sigterm(trainer) -> object:
    """On SIGTERM, ask the loop to checkpoint and stop (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        del frame
        logging.warning("signal %d: saving a checkpoint and stopping", signum)
        trainer._sigterm = True

    return signal.signal(signal.SIGTERM, handler)


class Trainer:
    """Holds a run's pieces; ``run()`` trains to ``config.num_train_steps``."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = workdir
        self.info = data.get_info(config.dataset)
        self.comp = components.build(config, self.info)
        self.par = parallel.Parallel(config.parallel.backend)
        self.host_batch, _ = parallel.check_batch(config.batch_size, config.grad_accum_steps)
        self.is_main = jax.process_index() == 0
        workdir_lib.check_writable(workdir)
        self.ckpt = Checkpointer(workdir, every=config.checkpoint_every_steps,
                                 keep=config.keep_checkpoints,
                                 async_save=config.async_checkpoints)
        workdir_lib.prepare(workdir, config, has_checkpoint=self.ckpt.latest_step() is not None,
                            write=self.is_main)
        self.skipped_total = 0
        self.preempted = False
        self._sigterm = False
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
        """Trains to ``num_train_steps``; returns the final (device) state.

        Stops early, after saving a checkpoint at the current step, on SIGTERM
        (or orbax's multi-host preemption signal); ``self.preempted`` is then True.
        """
        cfg = self.config
        state, position = self.initial_state()
        start = int(jax.device_get(self.par.unreplicate(state).step))
        train_iter = data.create_iterator(cfg.dataset, cfg.dataset.train_split,
                                          batch_size=self.host_batch, seed=cfg.seed,
                                          start_batch=position)
        writer = MetricWriter(self.workdir)
        bar = tqdm(total=cfg.num_train_steps, initial=start, disable=not self.is_main,
                   dynamic_ncols=True, desc="train")
        self.preempted, self._sigterm = False, False
        previous_handler = _install_sigterm(self)
        unchecked = None  # (step, device metrics) whose finiteness is not yet checked
        pending = None  # (step, device metrics, images/s): logged one step later
        t_log, n_log = time.perf_counter(), 0
        try:
            for step in range(start, cfg.num_train_steps):
                batch = self.par.shard_batch(next(train_iter))
                state, metrics = self.step_fn(state, batch)
                position += 1
                n_log += 1
                done = step + 1
                # Check the previous step (already computed): no stall of the pipeline.
                if unchecked is not None:
                    self._check(*unchecked)
                unchecked = (done, metrics)
                if pending is not None:
                    self._log(writer, bar, *pending)
                    pending = None
                if done % cfg.log_every_steps == 0 or done == cfg.num_train_steps:
                    now = time.perf_counter()
                    pending = (done, metrics, n_log * cfg.batch_size / (now - t_log))
                    t_log, n_log = now, 0
                bar.update(1)
                if cfg.debug.step_delay_s:
                    time.sleep(cfg.debug.step_delay_s)
                preempt = self._sigterm or self.ckpt.reached_preemption(done)
                final = done == cfg.num_train_steps
                if preempt or final or done % cfg.checkpoint_every_steps == 0:
                    self._check(*unchecked)  # never save a non-finite state
                    unchecked = None
                    self.save(done, state, position, force=preempt or final)
                if preempt:
                    self.ckpt.wait()
                    self.preempted = True
                    logging.warning("preempted at step %d: checkpoint saved in %s; run the same "
                                    "command again to continue.", done, self.ckpt.directory)
                    break
                if cfg.eval.num_batches and (done % cfg.eval_every_steps == 0 or final):
                    if pending is not None:
                        self._log(writer, bar, *pending)
                        pending = None
                    self.evaluate(state, done, writer, final=final)
                    t_log = time.perf_counter()  # images/s counts training time only
            if unchecked is not None:
                self._check(*unchecked)
            if pending is not None:
                self._log(writer, bar, *pending)
            self.ckpt.wait()  # raises if a background save failed
        finally:
            signal.signal(signal.SIGTERM, previous_handler) if previous_handler else None
            bar.close()
            writer.close()
            self.ckpt.close()
        return state

    def _check(self, step: int, metrics) -> None:
        """Applies the non-finite policy to one step's metrics (a small host read)."""
        flags = self.par.metrics_to_host({"finite": metrics["finite"],
                                          "skipped": metrics["skipped"]})
        if flags["finite"]:
            return
        host = self.par.metrics_to_host(metrics)
        bad = [k.split("/", 1)[1] for k, v in host.items()
               if k.startswith("loss/") and not math.isfinite(v)]
        what = (f"the loss of task(s) {', '.join(bad)}" if bad
                else f"the gradient (grad_norm={host['grad_norm']})")
        policy = self.config.nonfinite
        if policy.policy == "skip" and flags["skipped"] < policy.max_consecutive_skips:
            self.skipped_total += 1
            logging.warning("step %d: %s is not finite; update skipped (%d in a row, %d in "
                            "all).", step, what, int(flags["skipped"]), self.skipped_total)
            return
        raise FloatingPointError(
            f"step {step}: {what} is not finite"
            + (f" ({int(flags['skipped'])} updates in a row skipped)"
               if policy.policy == "skip" else "")
            + f". The last good checkpoint (step {self.ckpt.latest_step()}) is kept; lower "
            "learning_rate, check the data, or set nonfinite.policy='skip'.")

    def _log(self, writer: MetricWriter, bar, step: int, metrics, rate: float) -> None:
        host = self.par.metrics_to_host(metrics)
        host["images_per_sec"] = rate
        host["skipped_total"] = self.skipped_total
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
