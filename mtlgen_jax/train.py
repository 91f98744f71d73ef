"""The training loop: build, restore, train, log, checkpoint, evaluate.

``train_and_evaluate(config, workdir)`` is what ``launch.py`` calls; it is
importable and usable from a notebook too.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable

import jax
import ml_collections
from absl import logging
from tqdm import tqdm

from mtlgen_jax import checkpoint, components, data, evaluate, transfer
from mtlgen_jax import workdir as workdir_lib
from mtlgen_jax.checkpoint import Checkpointer
from mtlgen_jax.sampling import Sampler
from mtlgen_jax.step import LossTransform, TrainState
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


SOLVER_RESIDUAL_WARN = 1e-3  # an inner solve (MGDA, CAGrad, ...) this far off is reported


class OneStepLate:
    """Holds one step's device values until the next step is dispatched, then hands them
    to ``fn``: reading a step's metrics on the host never stalls the device pipeline."""

    def __init__(self, fn: Callable[..., None]):
        self.fn = fn
        self.held = None

    def put(self, *item) -> None:
        """Hands over what was held, then holds ``item``."""
        self.flush()
        self.held = item

    def flush(self) -> None:
        """Hands over what is held (if anything) now."""
        if self.held is not None:
            item, self.held = self.held, None
            self.fn(*item)


class Trainer:
    """Holds a run's pieces; ``run()`` trains to ``config.num_train_steps``.

    Args:
      config: the run's config.
      workdir: the run directory (checkpoints, logs, samples).
      loss_transform: see ``step.train_step`` (tests inject faults here).
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
                 loss_transform: LossTransform | None = None):
        self.config = config
        self.workdir = workdir
        self.info = data.get_info(config.dataset)
        parts = components.build_run(config, self.info, loss_transform=loss_transform)
        self.comp, self.par, self.host_batch = parts.comp, parts.par, parts.host_batch
        self.init_fn, self.step_fn = parts.init_fn, parts.step_fn
        self.is_main = jax.process_index() == 0
        workdir_lib.check_writable(workdir)
        if config.resume_step is not None:
            _resume_from(workdir, int(config.resume_step), move=self.is_main)
        if config.init_from and not checkpoint.complete_steps(workdir):
            transfer.check_source(config.init_from)
        self.ckpt = Checkpointer(workdir, every=config.checkpoint_every_steps,
                                 keep=config.keep_checkpoints,
                                 async_save=config.async_checkpoints)
        workdir_lib.prepare(workdir, config, has_checkpoint=self.ckpt.latest_step() is not None,
                            write=self.is_main)
        self.skipped_total = 0
        self._warned: set[str] = set()
        self.preempted = False
        self._sigterm = False
        self.sampler = Sampler(self.comp)

    # --- state --------------------------------------------------------------------------
    def initial_state(self) -> tuple[TrainState, int]:
        """The latest checkpoint's state, or a fresh one; and the data position."""
        latest = self.ckpt.latest_step()
        if latest is None:
            state = self.par.init_state(self.init_fn)
            if self.config.init_from:
                state = self._init_from(state)
            return state, 0
        saved_by = self.ckpt.restore_meta(latest).get("process_count")
        if saved_by is not None and saved_by != jax.process_count():
            raise ValueError(
                f"the checkpoint at step {latest} in {self.ckpt.directory} was written by "
                f"{saved_by} process(es); this run has {jax.process_count()}. Each process "
                "reads its own shard of the data, so the input position cannot carry over to "
                f"another process count yet: resume with {saved_by} process(es) (any number "
                "of devices each). The checkpoint is untouched.")
        abstract = jax.eval_shape(self.init_fn)
        state, meta = self.ckpt.restore(latest, self.par.abstract_state(abstract))
        state = self.par.place_restored(state)
        logging.info("resumed from step %d in %s", latest, self.workdir)
        return state, int(meta.get("data_position", latest))

    def _init_from(self, state: TrainState) -> TrainState:
        """A fresh state with ``config.init_from``'s parameters copied in (``transfer``)."""
        host = jax.device_get(self.par.unreplicate(state))
        source, source_tasks = transfer.load(self.config.init_from)
        params, report = transfer.merge(host.params, source, tasks=self.comp.task_names,
                                        source_tasks=source_tasks)
        logging.info("init_from %s: %d parameter arrays copied, %d fresh (%s)%s",
                     self.config.init_from, len(report["copied"]), len(report["fresh"]),
                     ", ".join(report["fresh"]) or "none",
                     "; backbone frozen" if self.config.init_from_freeze else "")
        return self.par.replicate(host.replace(params=params, ema_params=params))

    def save(self, step: int, state: TrainState, data_position: int, *, force: bool = False):
        meta = {"data_position": data_position, "batch_size": self.config.batch_size,
                "num_devices": self.par.num_devices, "process_count": jax.process_count(),
                "tasks": list(self.comp.task_names)}
        return self.ckpt.save(step, self.par.unreplicate(state), meta, force=force)

    # --- loop ---------------------------------------------------------------------------
    def run(self) -> TrainState:
        """Trains to ``num_train_steps``; returns the final (device) state.

        Stops early, after saving a checkpoint at the current step, on SIGTERM
        (or orbax's multi-host preemption signal); ``self.preempted`` is then True.
        """
        cfg = self.config
        try:
            state, position = self.initial_state()
        except BaseException:
            self.ckpt.close()  # orbax's threads stop here, not noisily at exit
            raise
        start = int(jax.device_get(self.par.unreplicate(state).step))
        train_iter = data.create_iterator(cfg.dataset, cfg.dataset.train_split,
                                          batch_size=self.host_batch, seed=cfg.seed,
                                          start_batch=position)
        writer = MetricWriter(self.workdir)
        bar = tqdm(total=cfg.num_train_steps, initial=start, disable=not self.is_main,
                   dynamic_ncols=True, desc="train")
        self.preempted, self._sigterm = False, False
        previous_handler = _install_sigterm(self)
        checks = OneStepLate(self._check)  # each step's finiteness, read one step late
        logs = OneStepLate(lambda *a: self._log(writer, bar, *a))  # log lines, likewise
        t_log, n_log = time.perf_counter(), 0
        try:
            for step in range(start, cfg.num_train_steps):
                batch = self.par.shard_batch(next(train_iter))
                state, metrics = self.step_fn(state, batch)
                position += 1
                n_log += 1
                done = step + 1
                checks.put(done, metrics)  # checks the previous step (already computed)
                logs.flush()
                if done % cfg.log_every_steps == 0 or done == cfg.num_train_steps:
                    now = time.perf_counter()
                    logs.put(done, metrics, n_log * cfg.batch_size / (now - t_log))
                    t_log, n_log = now, 0
                bar.update(1)
                if cfg.debug.step_delay_s:
                    time.sleep(cfg.debug.step_delay_s)
                preempt = self._sigterm or self.ckpt.reached_preemption(done)
                final = done == cfg.num_train_steps
                if preempt or final or done % cfg.checkpoint_every_steps == 0:
                    checks.flush()  # never save a non-finite state
                    self.save(done, state, position, force=preempt or final)
                if preempt:
                    self.ckpt.wait()
                    self.preempted = True
                    logging.warning("preempted at step %d: checkpoint saved in %s; run the same "
                                    "command again to continue.", done, self.ckpt.directory)
                    break
                if cfg.eval.num_batches and (done % cfg.eval_every_steps == 0 or final):
                    logs.flush()
                    self.evaluate(state, done, writer, final=final)
                    t_log = time.perf_counter()  # images/s counts training time only
            checks.flush()
            logs.flush()
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
        self._warn_once(step, host)
        host["images_per_sec"] = rate
        host["skipped_total"] = self.skipped_total
        writer.write(step, host)
        bar.set_postfix(loss=f"{host['loss']:.4f}", img_s=f"{rate:.0f}")

    def _warn_once(self, step: int, host: dict[str, float]) -> None:
        """Logs, once per run and kind, what a strategy reports going wrong: an inner solve
        whose residual exceeds SOLVER_RESIDUAL_WARN, or GradNorm restarting its weights."""
        name = self.config.weighting.name
        residual = host.get("weighting/solver_residual", 0.0)
        if residual > SOLVER_RESIDUAL_WARN and "residual" not in self._warned:
            self._warned.add("residual")
            logging.warning("step %d: %s's solver residual is %.3g (> %g): its weights are "
                            "inexact; raise num_iters in weighting.hparams.", step, name,
                            residual, SOLVER_RESIDUAL_WARN)
        if host.get("weighting/weights_reset", 0.0) > 0 and "reset" not in self._warned:
            self._warned.add("reset")
            logging.warning("step %d: %s's weights all reached 0 and were reset to equal "
                            "weights (counted in weighting/weights_reset).", step, name)

    def evaluate(self, state: TrainState, step: int, writer: MetricWriter, *, final: bool):
        """Metrics on the test split and PNG grids, with the EMA parameters."""
        cfg = self.config
        t0 = time.perf_counter()
        results = evaluate.evaluate(
            self.comp, self.sampler, self.par.replicated_copy(state.ema_params), cfg,
            num_batches=cfg.eval.num_batches if final else cfg.eval.num_batches_during_training,
            par=self.par, grid_dir=self.workdir if self.is_main else None, step=step)
        if self.is_main:
            writer.write(step, results)
            logging.info("eval at step %d (%.1fs):\n%s", step, time.perf_counter() - t0,
                         evaluate.format_table(results))


def _resume_from(workdir: str, step: int, *, move: bool) -> None:
    """``--config.resume_step``: every process checks the step exists; process 0 moves the
    later checkpoints aside (``checkpoint.set_aside_after``); then all continue together."""
    checkpoint.set_aside_after(workdir, step, move=move)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("mtlgen_jax resume_step")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (resuming from ``workdir``'s latest checkpoint if any) and evaluates."""
    return Trainer(config, workdir).run()
