"""configs/cifar10.py end to end on 8 simulated devices, through tfds.testing.mock_data.

A module of its own (not in test_parallel.py) so that, under pytest-xdist's
``--dist loadfile``, it runs beside test_parallel.py's fixture instead of after it.
"""

import os
import sys

import _serial
import numpy as np
import pytest
from test_parallel import COLLECTIVE_TIMEOUT, HERE, _env, _parse

pytestmark = pytest.mark.heavy  # minutes of compiles: scheduled first (conftest.py)

CIFAR10_CHECK = """
import json, sys
sys.path.insert(0, ".")
import jax, tensorflow_datasets as tfds
from configs import cifar10
from mtlgen_jax import train, writers
c = cifar10.get_config()
# The model shrunk to compile in seconds; the batch sizes, tasks, bf16 and guidance are
# the config's own (batch 256, evaluation batch 256 over 8 devices, 5 tasks).
c.model.width, c.model.channel_mult, c.model.num_res_blocks = 8, (1, 2), 1
c.model.attn_resolutions, c.model.num_heads = (), 1
c.batch_size = 40  # 5 tasks x 8 devices; the evaluation batch stays the config's 256
c.num_train_steps, c.warmup_steps, c.log_every_steps = 2, 1, 1
c.eval_every_steps, c.checkpoint_every_steps = 2, 2
c.eval.num_batches, c.eval.sample_steps = 1, 1
c.dataset.data_dir = sys.argv[1]
# tfds's MockFs swaps the process's file system while mock_data builds the evaluation
# dataset, under orbax's thread still finalising the last async save (test_train's
# test_mock_catalog_dataset): here, where the evaluation runs inside training, save
# synchronously. No real run mocks its file system.
c.async_checkpoints = False
with tfds.testing.mock_data(num_examples=300):
    state = train.Trainer(c, sys.argv[2]).run()
row = [r for r in writers.read_metrics(sys.argv[2]) if "eval/inpaint/psnr" in r][-1]
print("RESULT " + json.dumps({"devices": jax.device_count(), "step": int(state.step),
                              "eval": {k: v for k, v in row.items() if k.startswith("eval/")}}))
"""


def test_cifar10_config_trains_and_evaluates_on_8_devices(tmp_path):
    """configs/cifar10.py through tfds.testing.mock_data on 8 simulated devices: trains,
    saves, and the final evaluation (its real batch of 256 over 8 devices, 5 tasks,
    classifier-free guidance, bfloat16) reports every task's metrics."""
    env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=8 " + COLLECTIVE_TIMEOUT,
               JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    proc = _serial.run([sys.executable, "-c", CIFAR10_CHECK, str(tmp_path / "tfds"),
                        str(tmp_path / "run")], env=env, cwd=os.path.dirname(HERE),
                       capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = _parse(proc.stdout)
    assert out["devices"] == 8 and out["step"] == 2
    for task in ("inpaint", "super_resolve", "colorize", "denoise"):
        assert np.isfinite(out["eval"][f"eval/{task}/psnr"]), task
    assert any(k.startswith("eval/generate/") for k in out["eval"])
