"""The evaluator's draws: a task is scored on the same test conditions in every run."""

import itertools

import jax
import numpy as np

from configs import default
from mtlgen_jax import components, data, evaluate, parallel
from mtlgen_jax.data import DatasetInfo
from mtlgen_jax.sampling import Sampler

IMAGES = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


def scores(names: str) -> dict[str, float]:
    """The final evaluation of an untrained tiny run with tasks ``names`` on IMAGES."""
    cfg = default.get_config("tiny")
    cfg.tasks.names = names
    cfg.eval.self_ensemble = False
    info = DatasetInfo("synthetic", None, 3, 16, 64, 8, "train", "test")
    comp = components.build(cfg, info)
    params = components.init_params(comp.model, info, jax.random.key(0))
    return evaluate.evaluate(comp, Sampler(comp), params, cfg, num_batches=1,
                             par=parallel.Parallel(devices=jax.local_devices()[:1]))


def test_a_task_draws_the_same_conditions_whatever_the_other_tasks(monkeypatch):
    """Inpainting alone, first or second of two sees the same holes and denoising the
    same noise (their trivial baselines, functions of the condition alone, score the
    same): a specialist and a multi-task model are compared on equal conditions."""
    batch = {"image": IMAGES, "label": np.zeros((8,), np.int32)}
    monkeypatch.setattr(data, "create_iterator", lambda *a, **k: itertools.repeat(batch))
    alone, second, first = scores("inpaint"), scores("denoise,inpaint"), scores("inpaint,denoise")
    key = "eval/inpaint/psnr_baseline"
    assert alone[key] == second[key] == first[key]
    assert second["eval/denoise/psnr_baseline"] == first["eval/denoise/psnr_baseline"]
    # The two tasks' draws are not the same stream.
    assert evaluate.task_key("inpaint") != evaluate.task_key("denoise")


def test_task_keys_are_fixed_and_distinct():
    """The built-in tasks keep the keys of their positions in configs/default.py; any
    other name gets a stable key of its own, outside the built-in ones."""
    assert [evaluate.task_key(n) for n in default.get_config().tasks.names.split(",")] == [
        0, 1, 2, 3]
    plugin = evaluate.task_key("deblur")
    assert plugin == evaluate.task_key("deblur") and plugin >= len(evaluate.TASK_KEYS)
    assert plugin != evaluate.task_key("dehaze")
