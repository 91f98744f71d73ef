"""Old workdirs stay usable: config.json files written before a key existed still load."""

import inspect
import json

from configs import default
from mtlgen_jax import components, tasks, workdir
from mtlgen_jax.data import DatasetInfo

# The leaf keys of configs/default.py in the first release (commit 91427c7).
FIRST_RELEASE_KEYS = frozenset((
    'adam_b1', 'adam_b2', 'batch_size', 'checkpoint_every_steps', 'dataset.channels',
    'dataset.data_dir', 'dataset.folder', 'dataset.image_size', 'dataset.name',
    'dataset.shuffle_buffer', 'dataset.test_fraction', 'dataset.test_split',
    'dataset.train_split', 'diffusion.discrete_steps', 'diffusion.eta', 'diffusion.prediction',
    'diffusion.sampler', 'diffusion.schedule', 'dtype', 'ema_decay', 'end_learning_rate_factor',
    'eval.batch_size', 'eval.guidance', 'eval.num_batches', 'eval.num_batches_during_training',
    'eval.sample_steps', 'eval_every_steps', 'grad_clip', 'keep_checkpoints', 'learning_rate',
    'log_every_steps', 'model.attn_resolutions', 'model.channel_mult', 'model.dropout',
    'model.num_heads', 'model.num_res_blocks', 'model.width', 'num_train_steps',
    'parallel.backend', 'seed', 'tasks.colorize.objective', 'tasks.colorize.weight',
    'tasks.denoise.objective', 'tasks.denoise.sigma_max', 'tasks.denoise.sigma_min',
    'tasks.denoise.weight', 'tasks.generate.label_dropout', 'tasks.generate.objective',
    'tasks.generate.weight', 'tasks.inpaint.mask_kinds', 'tasks.inpaint.objective',
    'tasks.inpaint.weight', 'tasks.names', 'tasks.super_resolve.factor',
    'tasks.super_resolve.objective', 'tasks.super_resolve.weight', 'warmup_steps',
    'weight_decay', 'weighting.name'))


# Keys whose default config value is not what runs before them did: their backfill is
# the old behaviour (evaluation without the self-ensemble, training without flips), the
# default the new one.
DEFAULT_CHANGED = {"eval.self_ensemble", "dataset.augment"}


def leaves(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(leaves(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def test_every_key_added_since_the_first_release_has_a_backfill_default():
    current = leaves(json.loads(default.get_config().to_json()))
    missing = sorted(set(current) - FIRST_RELEASE_KEYS - set(workdir.ADDED_KEYS))
    assert not missing, f"add {missing} to workdir.ADDED_KEYS"
    for key, value in workdir.ADDED_KEYS.items():
        if key.startswith("tasks."):
            # A task parameter: the backfill is what a task did before the key existed,
            # i.e. its constructor's (or its own configure's) default (the config's default
            # may since have changed).
            _, name, param = key.split(".")
            signature = inspect.signature(tasks.Task.__init__).parameters
            if param not in signature:
                signature = inspect.signature(tasks.get_class(name).configure).parameters
            default_value = signature[param].default
            assert value == default_value, key
        elif key in DEFAULT_CHANGED:
            assert current[key] != value, key  # listed here only while they differ
        else:
            assert current[key] == value, key  # the backfill is the default's behaviour


def test_an_old_config_json_loads_and_builds(tmp_path):
    saved = json.loads(default.get_config().to_json())
    for key in workdir.ADDED_KEYS:  # as a run from the first release wrote it
        *parents, leaf = key.split(".")
        d = saved
        for p in parents:
            d = d[p]
        del d[leaf]
    saved["learning_rate"] = 0.123  # saved values win over defaults
    (tmp_path / workdir.CONFIG_FILE).write_text(json.dumps(saved))
    config = workdir.load_config(str(tmp_path))
    assert config.learning_rate == 0.123
    assert config.weighting.grad_space == "params" and config.nonfinite.policy == "halt"
    info = DatasetInfo(name="synthetic", num_classes=None, channels=3, image_size=32,
                       num_train=64, num_test=8, train_split="train", test_split="test")
    comp = components.build(config, info)
    assert comp.nonfinite == "halt"
