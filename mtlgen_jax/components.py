"""Builds the run's pieces from a config: model, tasks, strategy, optimizer, schedule.

Every check that can fail on a bad config runs here, before anything compiles.
``build`` reads the config once into :class:`Components` (what the step, the
sampler and the evaluator close over); ``build_run`` adds the devices, the initial
state and the wrapped step -- the one construction path of the train loop, the
benchmarks and the tests.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtlgen_jax import diffusion, parallel, tasks, transfer, weighting
from mtlgen_jax.models import MultiTaskModel
from mtlgen_jax.models.multitask import BACKBONES
from mtlgen_jax.models.vit import ATTENTION_IMPLS
from mtlgen_jax.step import AUGMENTS, LossTransform, TrainState, mixture_counts, train_step

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Components:
    """The static pieces of a run, read from its config once (no arrays, no devices)."""

    model: MultiTaskModel
    tasks: tuple[tasks.Task, ...]
    strategy: Any  # a weighting strategy
    optimizer: optax.GradientTransformation
    learning_rate_fn: Any
    schedule: Any  # diffusion schedule
    info: Any  # data.DatasetInfo
    prediction: str  # what the model predicts: 'eps' | 'v' | 'x0'
    discrete_steps: int | None  # None: continuous time
    global_batch: int
    ema_decay: float
    grad_accum_steps: int  # micro-batches per device per step
    grad_space: str  # gradient methods: 'params' | 'representation' (see grad_space())
    nonfinite: str  # 'halt' | 'skip' (see train.py)
    augment: str  # training images: 'none' | 'flip' | 'dihedral' (step.augment)
    augment_contrast: float  # lowest contrast factor of training images (1 = off; step.contrast)

    @property
    def task_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tasks)

    @property
    def task_counts(self) -> np.ndarray:
        """Examples of each task in every global batch (``step.mixture_counts``)."""
        return mixture_counts([t.weight for t in self.tasks], self.global_batch)

    def task_index(self, name: str) -> int:
        """The task id of ``name``; a clear error for a task this run does not have."""
        if name not in self.task_names:
            raise ValueError(f"task {name!r} is not one this model was trained on: "
                             f"{', '.join(self.task_names)}.")
        return self.task_names.index(name)


def _positive(config, *keys: str) -> None:
    for key in keys:
        value = config[key]
        if not value > 0:
            raise ValueError(f"config.{key}={value} must be > 0.")


def check_model_config(model_cfg, image_size: int, dtype: str = "float32") -> None:
    """The backbone vs. the image size and the dtype, before anything compiles.

    U-Net: image size vs. depth, width vs. GroupNorm. vit: image size vs. patch size,
    width vs. heads and the position code, ``attention_impl`` vs. dtype and head size.
    """
    kind = model_cfg.get("backbone", "unet")
    if kind not in BACKBONES:
        raise ValueError(f"model.backbone={kind!r} is unknown; use one of {BACKBONES}.")
    if model_cfg.get("head_depth", 0) < 0:
        raise ValueError(f"model.head_depth={model_cfg.head_depth} must be >= 0 (0: one output "
                         "layer per task).")
    rank = model_cfg.get("task_lora_rank", 0)
    if not isinstance(rank, int) or rank < 0:
        raise ValueError(f"model.task_lora_rank={rank!r} must be an int >= 0 (0: no per-task "
                         "low-rank adapters).")
    if kind == "vit" and model_cfg.get("task_film", False):
        raise ValueError("model.task_film applies to model.backbone='unet' only: the "
                         "transformer's adaLN already scales and shifts every norm per task. "
                         "Drop it (per-task capacity of the transformer: model.task_lora_rank).")
    if kind == "vit":
        _check_vit_config(model_cfg, image_size, dtype)
        return
    if model_cfg.get("attention_impl") is not None:
        raise ValueError(f"model.attention_impl={model_cfg.attention_impl!r} applies to "
                         "model.backbone='vit' only (the U-Net uses Flax's attention); drop it.")
    levels = len(model_cfg.channel_mult)
    factor = 2 ** (levels - 1)
    if image_size % factor:
        raise ValueError(
            f"dataset.image_size={image_size} cannot go through a U-Net with "
            f"{levels} levels (channel_mult={tuple(model_cfg.channel_mult)}), which halves the "
            f"image {levels - 1} times: use an image size divisible by {factor}, or fewer levels."
        )
    if model_cfg.width % 8 and model_cfg.width > 8:
        raise ValueError(f"model.width={model_cfg.width} should be a multiple of 8 (GroupNorm).")


def _check_vit_config(m, image_size: int, dtype: str) -> None:
    for key in ("width", "depth", "num_heads", "patch_size", "mlp_ratio"):
        if not m[key] > 0:
            raise ValueError(f"model.{key}={m[key]} must be > 0.")
    if image_size % m.patch_size:
        raise ValueError(f"dataset.image_size={image_size} is not divisible by model.patch_size="
                         f"{m.patch_size}: the transformer cuts the image into patch_size x "
                         "patch_size tokens. Use a patch size that divides the image size.")
    if m.width % m.num_heads:
        raise ValueError(f"model.width={m.width} is not divisible by model.num_heads="
                         f"{m.num_heads}: each head takes width / num_heads channels. Change "
                         "either.")
    if m.width % 4:
        raise ValueError(f"model.width={m.width} must be a multiple of 4 (the 2D sin-cos "
                         "position code splits it over rows and columns, sin and cos).")
    impl = m.attention_impl
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention_impl={impl!r} is unknown; use None (the default: "
                         "mtlgen_jax.models.vit.attention), 'xla' (jax.nn.dot_product_attention's "
                         "XLA implementation) or 'cudnn'.")
    if impl == "cudnn":
        head = m.width // m.num_heads
        if dtype != "bfloat16":
            raise ValueError(f"model.attention_impl='cudnn' needs dtype='bfloat16' (cuDNN's "
                             f"flash attention), not {dtype!r}: set --config.dtype=bfloat16 or "
                             "model.attention_impl='xla'.")
        if head % 8 or head > 128:
            raise ValueError(f"model.attention_impl='cudnn' needs a head size (model.width / "
                             f"model.num_heads = {head}) that is a multiple of 8 up to 128; "
                             "change width or num_heads, or use model.attention_impl='xla'.")


def model_kwargs(model_cfg) -> dict:
    """The backbone's keyword arguments (``MultiTaskModel.backbone``) from ``config.model``."""
    m = model_cfg
    rank = m.get("task_lora_rank", 0)
    if m.get("backbone", "unet") == "vit":
        return dict(width=m.width, depth=m.depth, num_heads=m.num_heads,
                    patch_size=m.patch_size, mlp_ratio=float(m.mlp_ratio), dropout=m.dropout,
                    attention_impl=m.attention_impl, task_lora_rank=rank)
    return dict(width=m.width, channel_mult=tuple(m.channel_mult),
                num_res_blocks=m.num_res_blocks, attn_resolutions=tuple(m.attn_resolutions),
                dropout=m.dropout, num_heads=m.num_heads,
                task_film=bool(m.get("task_film", False)), task_lora_rank=rank)


def build_optimizer(config) -> tuple[optax.GradientTransformation, Any]:
    """AdamW with linear warm-up and cosine decay, after global-norm clipping."""
    warmup = min(config.warmup_steps, max(config.num_train_steps - 1, 0))
    lr_fn = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
        decay_steps=max(config.num_train_steps, warmup + 1),
        end_value=config.learning_rate * config.end_learning_rate_factor,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(lr_fn, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps,
                    weight_decay=config.weight_decay),
    )
    return tx, lr_fn


def _split_top_level(text: str) -> list[str]:
    """'a=1,w=(1,2),b=x' -> ['a=1', 'w=(1,2)', 'b=x']: commas inside brackets stay."""
    items, depth, current = [], 0, []
    for ch in text:
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return items


def weighting_hparams(wcfg) -> dict:
    """The strategy's hyperparameters: extra keys of ``config.weighting`` (config files)
    plus ``weighting.hparams``, a "key=value,key=value" string (the command line, where
    a locked config takes no new keys), e.g. ``--config.weighting.hparams=c=0.4`` or
    ``--config.weighting.hparams='weights=(1,2,1)'``."""
    import ast

    out = {k: v for k, v in wcfg.items() if k not in ("name", "hparams", "grad_space")}
    for item in filter(None, (x.strip() for x in _split_top_level(str(wcfg.get("hparams", ""))))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"weighting.hparams={wcfg.hparams!r}: write key=value pairs "
                             "separated by commas, e.g. 'c=0.4,num_iters=50'.")
        try:
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = value.strip()
    return out


GRAD_SPACES = ("params", "representation")


def grad_space(wcfg) -> str:
    """``weighting.grad_space``: where gradient methods take the per-task gradients.

    'params' (default): the shared (backbone) parameters, K backward passes through
    the backbone. 'representation': the shared representation (the backbone's output),
    one backward pass through the heads and one through the backbone -- the cheap
    "-ub" mode (see ``step.representation_losses_and_gradients``).
    """
    return wcfg.grad_space


def check_grad_space(wcfg, strategy) -> None:
    space = grad_space(wcfg)
    if space not in GRAD_SPACES:
        raise ValueError(f"weighting.grad_space={space!r} is unknown; use one of {GRAD_SPACES}.")
    if space != "params" and not strategy.uses_task_grads:
        raise ValueError(f"weighting.grad_space={space!r} applies to gradient methods only; "
                         f"{strategy.name!r} weighs losses. Drop grad_space or pick a gradient "
                         "method (pcgrad, mgda, cagrad, ...).")


def build(config, info) -> Components:
    """All checks on ``config`` and the pieces of a run (no compilation happens here)."""
    _positive(config, "batch_size", "num_train_steps", "learning_rate", "log_every_steps",
              "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints")
    if not 0.0 <= config.ema_decay < 1.0:
        raise ValueError(f"config.ema_decay={config.ema_decay} must be in [0, 1).")
    if config.nonfinite.policy not in ("halt", "skip"):
        raise ValueError(f"nonfinite.policy={config.nonfinite.policy!r}: use 'halt' or 'skip'.")
    if config.nonfinite.max_consecutive_skips < 1:
        raise ValueError(f"nonfinite.max_consecutive_skips="
                         f"{config.nonfinite.max_consecutive_skips} must be >= 1.")
    if config.dtype not in DTYPES:
        raise ValueError(f"config.dtype={config.dtype!r} is unknown; use one of {tuple(DTYPES)}.")
    if config.diffusion.prediction not in ("eps", "v", "x0"):
        raise ValueError(f"diffusion.prediction={config.diffusion.prediction!r}: use eps, v or x0.")
    check_model_config(config.model, info.image_size, config.dtype)
    augment = config.dataset.get("augment", "none")
    if augment not in AUGMENTS:
        raise ValueError(f"dataset.augment={augment!r} is unknown; use one of {AUGMENTS} "
                         "(random flips / flips and quarter turns of each training image).")
    augment_contrast = config.dataset.get("augment_contrast", 1.0)
    if not isinstance(augment_contrast, int | float) or not 0.0 < augment_contrast <= 1.0:
        raise ValueError(f"dataset.augment_contrast={augment_contrast!r}: the lowest factor a "
                         "training image's contrast is scaled by, in (0, 1] (1 = off).")
    task_list = tasks.create_all(config.tasks, channels=info.channels, image_size=info.image_size,
                                 num_classes=info.num_classes or 0)
    mixture_counts([t.weight for t in task_list], config.batch_size)  # every task gets examples
    hparams = weighting_hparams(config.weighting)
    strategy = weighting.create(config.weighting.name, len(task_list), **hparams)
    check_grad_space(config.weighting, strategy)
    schedule = diffusion.get_schedule(config.diffusion.schedule)
    model = MultiTaskModel(
        tasks=tuple(t.name for t in task_list), out_channels=info.channels,
        backbone=model_kwargs(config.model),
        num_classes=info.num_classes or 0, dtype=DTYPES[config.dtype],
        zero_heads=tuple(t.uses_start for t in task_list),
        backbone_kind=config.model.get("backbone", "unet"),
        head_depth=config.model.get("head_depth", 0),
    )
    transfer.check_config(config)
    optimizer, lr_fn = build_optimizer(config)
    optimizer = transfer.freeze(optimizer, config.init_from_freeze)
    return Components(
        model=model, tasks=task_list, strategy=strategy, optimizer=optimizer,
        learning_rate_fn=lr_fn, schedule=schedule, info=info,
        prediction=config.diffusion.prediction,
        discrete_steps=config.diffusion.discrete_steps or None, global_batch=config.batch_size,
        ema_decay=config.ema_decay, grad_accum_steps=config.grad_accum_steps,
        grad_space=grad_space(config.weighting), nonfinite=config.nonfinite.policy,
        augment=augment, augment_contrast=float(augment_contrast))


def init_params(model: MultiTaskModel, info, rng: jax.Array):
    """Model parameters from a dummy batch of one example."""
    s, c = info.image_size, info.channels
    x = jnp.zeros((1, s, s, c), jnp.float32)
    cond = tasks.Condition(image=x, mask=jnp.zeros((1, s, s, 1), jnp.float32))
    zeros = jnp.zeros((1,), jnp.int32)
    return model.init(rng, x, cond, jnp.zeros((1,), jnp.float32), zeros, zeros)["params"]


def init_state(comp: Components, seed: int) -> TrainState:
    """A fresh TrainState (call under jit / eval_shape)."""
    key = jax.random.key(seed)
    k_params, k_run = jax.random.split(key)
    params = init_params(comp.model, comp.info, k_params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=comp.optimizer.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
        weighting_state=comp.strategy.init(),
        rng=jax.random.key_data(k_run),
        skipped=jnp.zeros((), jnp.int32),
    )


@dataclasses.dataclass(frozen=True)
class RunParts:
    """What a train loop, a benchmark or a test needs to run steps.

    Attributes:
      comp: the static pieces (:class:`Components`).
      par: the devices and the backend (:class:`~mtlgen_jax.parallel.Parallel`).
      host_batch: this process's share of the global batch.
      init_fn: ``() -> TrainState``, a fresh state (pass it to ``par.init_state``).
      step_fn: the compiled global step ``(state, batch) -> (state, metrics)``; the
        state is donated.
    """

    comp: Components
    par: parallel.Parallel
    host_batch: int
    init_fn: Callable[[], TrainState]
    step_fn: Callable


def build_run(config, info=None, *, comp: Components | None = None, devices=None,
              backend: str | None = None,
              loss_transform: LossTransform | None = None) -> RunParts:
    """Builds every piece of a training run from ``config`` (nothing compiles yet).

    Args:
      config: the run's config.
      info: the dataset's ``DatasetInfo`` (default: ``data.get_info(config.dataset)``,
        which prepares an embedded dataset on first use; pass a synthetic one to run
        without data, as the benchmarks and tests do).
      comp: use these components instead of ``build(config, info)`` (e.g. an
        equivalent model in a benchmark).
      devices: the devices to run on (default: all devices of all processes).
      backend: overrides ``config.parallel.backend``.
      loss_transform: see ``step.train_step`` (tests install fault injection here).
    """
    if comp is None:
        if info is None:
            from mtlgen_jax import data  # imports TensorFlow: only where the data is read

            info = data.get_info(config.dataset)
        comp = build(config, info)
    par = parallel.Parallel(backend or config.parallel.backend, devices=devices)
    host_batch, _ = par.check_batch(config.batch_size, config.grad_accum_steps)
    step = functools.partial(train_step, comp, loss_transform=loss_transform)
    return RunParts(comp=comp, par=par, host_batch=host_batch,
                    init_fn=functools.partial(init_state, comp, config.seed),
                    step_fn=par.wrap(step))
