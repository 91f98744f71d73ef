"""Resuming on other hardware, on the code that trains (XLA's optimisations ON).

Every other test compiles with ``jax_disable_most_optimizations``; these runs do not,
so "1 device = 8 devices" and "kill/resume is bitwise" are checked on the optimised
path too, with the tiny config widened to a two-level U-Net with attention (strided
down- and upsampling).

A run of 8 steps saves at step 3; a copy of its workdir without the later checkpoints
stands for a run killed after step 3, and is resumed on another device count and
backend: 8 -> 2 (pmap), 8 -> 1 (shard_map), 1 -> 8 (shard_map), and 8 -> 8 (bitwise).
Only the pmap resume compiles anew (the others find ref8's or ref1's program in the
cache): 1 -> 8 on shard_map instead of pmap took the fixture from 250 to 178 s here.
Each launch is one process (the device count is fixed when JAX starts), one after
another (multi-device processes sharing the 2 test cores were seen to hang).

Tolerance: runs on different device counts differ only in float32 reduction order
(the per-device gradient sums, then the cross-device sum). Over the 5 steps after a
resume the losses agree to 1e-4 relative and the parameters to 1e-4 relative / 2e-5
absolute. Adam with its default eps moves a parameter whose gradient is near zero by
up to ~lr whatever the last bits of that gradient (a zero-initialised conv's bias
differed by 8e-5 after 5 steps), so these runs use eps = 1e-3, which keeps the update
a smooth function of the gradient.
"""

import json
import os
import shutil
import sys

import _data
import _serial
import chex
import jax
import numpy as np
import pytest

from configs import default
from mtlgen_jax import cpu_devices, train, writers

pytestmark = pytest.mark.heavy  # minutes of compiles: scheduled first (conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, SAVED = 8, 3
COLLECTIVE_TIMEOUT = cpu_devices.COLLECTIVE_TIMEOUT_FLAG
# Two levels (strided down- and upsampling) and attention, on the optimised path: the
# tiny config has one level and no attention since the rest of the suite compiles it.
UNET = {"model.channel_mult": (1, 2), "model.attn_resolutions": (8,)}
UNET_FLAGS = [f"--config.{k}={v}".replace(" ", "") for k, v in UNET.items()]


def launch(workdir, data_dir, devices, backend="shard_map"):
    # A persistent compilation cache shared by the launches: a resume compiles the same
    # program as the reference run of its device count and backend (the 8 -> 8 and
    # 8 -> 1 resumes reuse ref8's and ref1's), which is what the suite's time allows.
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                         + COLLECTIVE_TIMEOUT,
               JAX_COMPILATION_CACHE_DIR=str(workdir.parent / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)  # the optimised path
    proc = _serial.run(
        [sys.executable, "launch.py", "--config", "configs/default.py:tiny",
         "--workdir", str(workdir), f"--config.dataset.data_dir={data_dir}",
         f"--config.num_train_steps={STEPS}", f"--config.checkpoint_every_steps={SAVED}",
         "--config.keep_checkpoints=5", "--config.log_every_steps=1",
         "--config.eval.num_batches=0", "--config.tasks.names=denoise,inpaint",
         "--config.adam_eps=1e-3",  # Adam's update smooth in g (as tests/_multidevice.py)
         *UNET_FLAGS,
         f"--config.parallel.backend={backend}"],
        cwd=ROOT, env=env, devices=devices, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def killed_after_saved(src, dst):
    """A copy of run ``src`` as if killed right after its step-``SAVED`` checkpoint."""
    shutil.copytree(src, dst)
    for name in os.listdir(os.path.join(dst, "checkpoints")):
        if name.isdigit() and int(name) > SAVED:
            shutil.rmtree(os.path.join(dst, "checkpoints", name))
    return dst


def losses(workdir):
    return {r["step"]: [r["loss/denoise"], r["loss/inpaint"]]
            for r in writers.read_metrics(str(workdir)) if "loss" in r}


def final(workdir, data_dir):
    c = default.get_config("tiny")
    c.dataset.data_dir = str(data_dir)
    c.tasks.names = "denoise,inpaint"
    c.update_from_flattened_dict(UNET)
    state, position = train.Trainer(c, str(workdir)).initial_state()
    return jax.device_get(state), position


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("devices")
    data_dir = _data.shared()
    out = {"data_dir": data_dir}
    out["ref8"], out["ref1"] = root / "ref8", root / "ref1"
    launch(out["ref8"], data_dir, 8)
    launch(out["ref1"], data_dir, 1)
    for name, src, devices, backend in [("8to2", "ref8", 2, "pmap"),
                                        ("8to1", "ref8", 1, "shard_map"),
                                        ("1to8", "ref1", 8, "shard_map"),
                                        ("8to8", "ref8", 8, "shard_map")]:
        out[name] = killed_after_saved(out[src], root / name)
        err = launch(out[name], data_dir, devices, backend)
        assert f"resumed from step {SAVED}" in err
    return out


def assert_continues(run, ref, data_dir):
    lr, lx = losses(ref), losses(run)
    assert sorted(lx) == sorted(lr) == list(range(1, STEPS + 1))
    after = list(range(SAVED + 1, STEPS + 1))  # 5 steps after the resume
    np.testing.assert_allclose([lx[s] for s in after], [lr[s] for s in after], rtol=1e-4)
    (sx, px), (sr, pr) = final(run, data_dir), final(ref, data_dir)
    assert int(sx.step) == int(sr.step) == STEPS and px == pr == STEPS
    chex.assert_trees_all_close(sx, sr, rtol=1e-4, atol=2e-5)  # also opt, EMA, weighting


def test_one_device_equals_eight_with_optimisations(runs):
    l1, l8 = losses(runs["ref1"]), losses(runs["ref8"])
    np.testing.assert_allclose([l1[s] for s in sorted(l1)], [l8[s] for s in sorted(l8)],
                               rtol=1e-4)


@pytest.mark.parametrize("name, ref", [("8to2", "ref8"), ("8to1", "ref8"), ("1to8", "ref1")])
def test_resume_on_another_device_count_and_backend(runs, name, ref):
    assert_continues(runs[name], runs[ref], runs["data_dir"])


def test_kill_and_resume_is_bitwise_with_optimisations(runs):
    (a, pa), (b, pb) = final(runs["8to8"], runs["data_dir"]), final(runs["ref8"],
                                                                     runs["data_dir"])
    chex.assert_trees_all_equal(a, b)
    assert pa == pb == STEPS
    assert losses(runs["8to8"]) == losses(runs["ref8"])


def test_another_process_count_is_refused_and_the_checkpoint_untouched(runs, tmp_path):
    work = killed_after_saved(runs["ref1"], tmp_path / "p")
    meta = work / "checkpoints" / str(SAVED) / "meta" / "metadata"
    saved = json.loads(meta.read_text())
    assert saved["process_count"] == 1
    meta.write_text(json.dumps(dict(saved, process_count=2)))
    ckpts = work / "checkpoints"
    before = sorted((str(p), p.stat().st_size) for p in ckpts.rglob("*") if p.is_file())
    with pytest.raises(ValueError, match=r"written by 2 process\(es\); this run has 1.*"
                                         r"resume with 2 process"):
        final(work, runs["data_dir"])
    assert sorted((str(p), p.stat().st_size) for p in ckpts.rglob("*") if p.is_file()) == before
