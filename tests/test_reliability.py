"""Runs that survive: kill/resume is bitwise identical, preemption, partial saves, NaNs."""

import os
import shutil
import signal
import subprocess
import sys
import time

import _data
import _serial
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _serial import multidevice

from configs import default
from mtlgen_jax import train, writers
from mtlgen_jax.checkpoint import Checkpointer, CheckpointError

pytestmark = pytest.mark.heavy  # minutes of compiles: scheduled first (conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


def args_for(workdir, data_dir, *extra):
    return [sys.executable, "launch.py", "--config", "configs/default.py:tiny",
            "--workdir", str(workdir), f"--config.dataset.data_dir={data_dir}",
            f"--config.num_train_steps={STEPS}", "--config.checkpoint_every_steps=2",
            "--config.log_every_steps=1", "--config.eval.num_batches=0",
            "--config.tasks.names=denoise,inpaint",
            # The l2 loss the tolerances below were set for (the relative loss's per-example
            # weights, up to 1e4, magnify reduction-order differences between processes).
            "--config.tasks.denoise.loss=l2", "--config.tasks.inpaint.loss=l2", *extra]


def env():
    return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
                JAX_DISABLE_MOST_OPTIMIZATIONS="1")


def spawn(*a):
    return subprocess.Popen(args_for(*a), cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_ok(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-4000:]
    return err


def wait_for_checkpoint(workdir, step, proc, timeout=300):
    path = os.path.join(workdir, "checkpoints", str(step))
    t0 = time.time()
    while not os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.time() - t0 < timeout
        time.sleep(0.2)


def final_state(workdir, data_dir):
    cfg = config(data_dir)
    state, position = train.Trainer(cfg, str(workdir)).initial_state()
    return jax.device_get(state), position


def losses_by_step(workdir):
    rows = {}
    for r in writers.read_metrics(str(workdir)):
        if "loss" in r:
            rows[r["step"]] = [r["loss/denoise"], r["loss/inpaint"]]  # last row of a step wins
    return rows


def config(data_dir, **kw):
    c = default.get_config("tiny")
    c.dataset.data_dir = str(data_dir)
    c.num_train_steps = STEPS
    c.checkpoint_every_steps = 2
    c.log_every_steps = 1
    c.eval.num_batches = 0
    c.tasks.names = "denoise,inpaint"
    c.tasks.denoise = dict(c.tasks.denoise, loss="l2")  # as args_for
    c.tasks.inpaint = dict(c.tasks.inpaint, loss="l2")
    c.update_from_flattened_dict(kw)
    return c


@pytest.fixture(scope="module")
def data_dir():
    return _data.shared()


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):
    """One uninterrupted run, and one killed with SIGKILL after step 2 and resumed."""
    root = tmp_path_factory.mktemp("rel")
    a, b = root / "a", root / "b"
    with multidevice():
        procs = [spawn(a, data_dir), spawn(b, data_dir, "--config.debug.step_delay_s=1.0")]
        wait_for_checkpoint(str(b), 2, procs[1])
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait()
        wait_ok(procs[0])
        assert not os.path.exists(os.path.join(b, "checkpoints", str(STEPS)))
        wait_ok(spawn(b, data_dir))  # resume to the end
    return a, b


def test_kill_and_resume_is_bitwise_identical(straight, data_dir):
    """Also the determinism test: two processes (one of them killed and resumed) that
    start from the same config end bitwise equal, step by step."""
    a, b = straight
    (sa, pa), (sb, pb) = final_state(a, data_dir), final_state(b, data_dir)
    assert int(sb.step) == STEPS and pa == pb == STEPS
    # params, optimizer state, EMA, weighting state, rng: all bitwise equal.
    chex.assert_trees_all_equal(sa, sb)
    la, lb = losses_by_step(a), losses_by_step(b)
    assert sorted(la) == list(range(1, STEPS + 1))
    assert la == lb


def test_sigterm_saves_and_stops(tmp_path, data_dir):
    with multidevice():
        proc = spawn(tmp_path / "p", data_dir, "--config.debug.step_delay_s=1.0")
        wait_for_checkpoint(str(tmp_path / "p"), 2, proc)
        proc.send_signal(signal.SIGTERM)
        err = wait_ok(proc)
    assert "preempted at step" in err
    steps = sorted(int(s) for s in os.listdir(tmp_path / "p" / "checkpoints") if s.isdigit())
    # A checkpoint at the step it was stopped (resuming from it is test_kill_and_resume's path).
    assert 2 < steps[-1] < STEPS
    assert final_state(tmp_path / "p", data_dir)[1] == steps[-1]


def test_partial_checkpoint_is_removed_and_previous_restored(straight, data_dir, tmp_path,
                                                              caplog):
    src = straight[0]
    work = tmp_path / "w"
    shutil.copytree(src, work)
    ck = work / "checkpoints"
    shutil.rmtree(ck / str(STEPS))
    # A save of step 6 that died before orbax renamed its temporary directory.
    shutil.copytree(ck / "4", ck / f"{STEPS}.orbax-checkpoint-tmp-1795750000000000")
    trainer = train.Trainer(config(data_dir), str(work))
    assert "partial checkpoint" in caplog.text
    state, position = trainer.initial_state()
    assert int(state.step) == 4 and position == 4
    assert not any("tmp" in n for n in os.listdir(ck))


def nan_at(first_step, count, task):
    """A loss transform (``step.train_step``'s seam): task ``task``'s loss -- and so its
    gradient -- is NaN at steps ``first_step .. first_step + count - 1`` (0-based)."""
    def transform(losses, step):
        hit = (step >= first_step) & (step < first_step + count)
        return losses * jnp.where(hit & (jnp.arange(losses.shape[0]) == task), jnp.nan, 1.0)

    return transform


def test_nan_halts_and_keeps_last_good_checkpoint(tmp_path, data_dir):
    cfg = config(data_dir)
    trainer = train.Trainer(cfg, str(tmp_path / "n"), loss_transform=nan_at(3, 1, task=1))
    with pytest.raises(FloatingPointError, match=r"step 4: the loss of task\(s\) inpaint"):
        trainer.run()
    steps = sorted(int(s) for s in os.listdir(tmp_path / "n" / "checkpoints") if s.isdigit())
    assert steps == [2]
    state, _ = final_state(tmp_path / "n", data_dir)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


def test_nan_skip_keeps_state_bitwise_then_halts(tmp_path, data_dir):
    """NaN at steps 3 and 4: step 3's update is dropped, the second drop in a row halts."""
    work = str(tmp_path / "s")
    cfg = config(data_dir, checkpoint_every_steps=1,
                 **{"nonfinite.policy": "skip", "nonfinite.max_consecutive_skips": 2})
    trainer = train.Trainer(cfg, work, loss_transform=nan_at(2, 2, task=0))
    with pytest.raises(FloatingPointError, match="2 updates in a row skipped"):
        trainer.run()
    ckpt = Checkpointer(work)
    abstract = jax.eval_shape(train.Trainer(cfg, work).init_fn)
    before, _ = ckpt.restore(2, abstract)
    after, meta = ckpt.restore(3, abstract)
    ckpt.close()
    assert sorted(int(s) for s in os.listdir(os.path.join(work, "checkpoints"))
                  if s.isdigit()) == [1, 2, 3]
    assert int(after.step) == 3 and meta["data_position"] == 3 and int(after.skipped) == 1
    for field in ("params", "opt_state", "ema_params", "weighting_state"):
        chex.assert_trees_all_equal(getattr(before, field), getattr(after, field))
    row = [r for r in writers.read_metrics(work) if r.get("step") == 3 and "loss" in r][-1]
    assert row["skipped"] == 1 and row["skipped_total"] == 1


# Two runs that differ only in float32 reduction order (device count) drift apart by up
# to a small fraction of one Adam update: m / sqrt(v) normalises every coordinate, so a
# gradient component near zero whose last bits differ still moves its parameter by up
# to ~lr (2e-3 here). Parameters are compared to 1e-5, losses to 1e-4 relative.
PARAM_ATOL = 1e-5


def test_corrupt_checkpoint_names_step_and_file_then_resume_step_continues(straight, data_dir,
                                                                          tmp_path):
    """A truncated checkpoint: a CheckpointError naming the step, a file and the way on;
    nothing is deleted. ``resume_step`` then resumes from the previous checkpoint (the
    later one is moved aside, not deleted) and ends equal to the straight run (to float32
    reduction order: this process's device count differs from the subprocess's), with the
    re-logged steps replacing the old records."""
    a = straight[0]
    work = tmp_path / "c"
    shutil.copytree(a, work)
    last = work / "checkpoints" / str(STEPS)
    data_files = [p for p in (last / "state").rglob("*") if p.is_file() and p.stat().st_size > 64
                  and "ocdbt" in str(p)]
    assert data_files
    for p in data_files:
        with open(p, "r+b") as f:
            f.truncate(p.stat().st_size // 2)
    before = sorted(str(p) for p in last.rglob("*"))
    with pytest.raises(CheckpointError, match=rf"step {STEPS} cannot be read: /.*resume_step=4"):
        train.Trainer(config(data_dir), str(work)).initial_state()
    assert sorted(str(p) for p in last.rglob("*")) == before  # left as it was
    # The command line ends with the message itself, not TensorStore's traceback.
    proc = _serial.run(args_for(work, data_dir), cwd=ROOT, env=env(), capture_output=True,
                       text=True, timeout=600)
    assert proc.returncode == 1
    # (`in`, not startswith: a background thread's shutdown noise, e.g. asyncio's "Event
    # loop is closed" traceback, can land on the same line without a newline.)
    final_line = proc.stderr.strip().splitlines()[-1]
    assert f"error: the checkpoint at step {STEPS} cannot be read: /" in final_line, \
        final_line
    assert sorted(str(p) for p in last.rglob("*")) == before

    with pytest.raises(ValueError, match=r"resume_step=3: .*no checkpoint at step 3; steps "
                                         r"present: \[2, 4, 6\]"):
        train.Trainer(config(data_dir, resume_step=3), str(work))
    trainer = train.Trainer(config(data_dir, resume_step=4), str(work))
    assert os.path.isdir(work / "checkpoints_set_aside" / str(STEPS))  # kept
    state = jax.device_get(trainer.run())
    chex.assert_trees_all_close(state, final_state(a, data_dir)[0], rtol=1e-4, atol=PARAM_ATOL)
    la, lw = losses_by_step(a), losses_by_step(work)
    assert sorted(lw) == sorted(la) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([lw[s] for s in sorted(lw)], [la[s] for s in sorted(la)],
                               rtol=1e-4)


def test_failed_save_stops_the_run_and_keeps_earlier_checkpoints(straight, data_dir, tmp_path,
                                                                 monkeypatch):
    """ENOSPC injected into orbax's background write of step 4 (a full disk cannot be made
    here, and file modes do not stop root): the run stops with the message, step 2 stays
    intact, and the same command resumes from it to the end, its losses those of the
    straight run."""
    import errno

    from etils import epath

    err, says = errno.ENOSPC, "the disk is full"

    work = str(tmp_path / "f")
    path_cls = type(epath.Path(work))
    original = path_cls.write_text

    def failing(self, *a, **k):
        if "4.orbax-checkpoint-tmp" in str(self) and "array_metadatas" in str(self):
            raise OSError(err, os.strerror(err), str(self))
        return original(self, *a, **k)

    monkeypatch.setattr(path_cls, "write_text", failing)
    with pytest.raises(CheckpointError, match=rf"{says}.*steps \[2\]\) are intact.*step 2\."):
        train.Trainer(config(data_dir), work).run()
    monkeypatch.setattr(path_cls, "write_text", original)
    assert Checkpointer(work, read_only=True).all_steps() == [2]
    state = jax.device_get(train.Trainer(config(data_dir), work).run())
    assert int(state.step) == STEPS and final_state(work, data_dir)[1] == STEPS
    la, lw = losses_by_step(straight[0]), losses_by_step(work)
    assert sorted(lw) == sorted(la)
    np.testing.assert_allclose([lw[s] for s in sorted(lw)], [la[s] for s in sorted(la)],
                               rtol=1e-3)


def test_torn_metrics_line_is_cut_and_readers_keep_the_last_record(tmp_path):
    work = str(tmp_path)
    with open(os.path.join(work, "metrics.jsonl"), "w") as f:
        f.write('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 2.0}\n'
                '{"step": 2, "eval/x/psnr": 9.0}\n{"step": 3, "lo')
    rows = writers.read_metrics(work)  # a reader skips the torn line
    assert [r["step"] for r in rows] == [1, 2, 2]
    w = writers.MetricWriter(work, enabled=True)  # the writer cuts it
    w.write(2, {"loss": 2.5})  # a resumed run logs step 2 again
    w.write(3, {"loss": 3.0})
    w.close()
    raw = writers.read_metrics(work, latest=False)
    assert [r["step"] for r in raw] == [1, 2, 2, 2, 3]
    rows = writers.read_metrics(work)
    assert [(r["step"], r.get("loss"), r.get("eval/x/psnr")) for r in rows] == [
        (1, 1.0, None), (2, None, 9.0), (2, 2.5, None), (3, 3.0, None)]


def test_a_save_that_cannot_write_names_the_cause_and_the_intact_checkpoints(straight,
                                                                          tmp_path):
    import errno

    work = tmp_path / "e"
    shutil.copytree(straight[0], work)
    ckpt = Checkpointer(str(work))
    try:
        msg = str(ckpt._save_failed(PermissionError(errno.EACCES, "Permission denied")))
    finally:
        ckpt.close()
    assert "the checkpoint directory cannot be written" in msg
    assert f"steps [2, 4, {STEPS}]) are intact" in msg and f"resume from step {STEPS}." in msg
