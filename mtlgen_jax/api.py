"""Checkpoints in notebooks: ``restore(workdir)`` returns a :class:`Run`.

    import mtlgen_jax as mg
    run = mg.restore("runs/demo")                       # latest step, EMA parameters
    cond = run.degrade("inpaint", images_uint8, rng)    # the task's condition
    out = run.sample("inpaint", condition=cond, rng=rng, steps=50)   # uint8 [N, H, W, C]

Only the parameters are read from the checkpoint (no optimizer state), replicated
over whatever devices this process has: a checkpoint written on 8 devices restores
on one CPU. Sampling and evaluation shard their batch over those devices.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from mtlgen_jax import components, data, ensemble, evaluate, parallel
from mtlgen_jax import workdir as workdir_lib
from mtlgen_jax.checkpoint import FORMAT_VERSION, Checkpointer
from mtlgen_jax.images import to_float, to_uint8
from mtlgen_jax.sampling import Sampler, settings_for
from mtlgen_jax.tasks import Condition


class Run:
    """A trained model restored from a workdir, ready to sample and evaluate.

    Attributes:
      config: the run's ConfigDict (from ``<workdir>/config.json``).
      tasks: the task names, in task-id order.
      step: the restored checkpoint's step.
      params: the restored parameters (EMA unless ``restore(..., ema=False)``).
    """

    def __init__(self, config, comp, params, step: int, workdir: str, par: parallel.Parallel):
        self.config = config
        self.comp = comp
        self.params = params
        self.step = step
        self.workdir = workdir
        self.tasks = comp.task_names
        self.info = comp.info
        self._par = par
        self._sampler = Sampler(comp)
        self._degrade = {}
        self._restore = {}
        self._progress = [None]  # the running restore_image's progress callback

    def __repr__(self) -> str:
        return (f"Run({self.workdir!r}, step={self.step}, tasks={self.tasks}, "
                f"dataset={self.config.dataset.name!r}, image_size={self.info.image_size})")

    def _task(self, name: str):
        return self.comp.tasks[self.comp.task_index(name)]

    def _check_images(self, images) -> np.ndarray:
        images = np.asarray(images)
        s, c = self.info.image_size, self.info.channels
        if images.ndim != 4 or images.shape[1:] != (s, s, c):
            raise ValueError(f"images have shape {images.shape}; this model takes uint8 "
                             f"[N, {s}, {s}, {c}] images.")
        if images.dtype != np.uint8:
            raise ValueError(f"images have dtype {images.dtype}; pass uint8 in [0, 255].")
        return images

    def degrade(self, task: str, images, rng: jax.Array) -> Condition:
        """The condition of ``task`` built from clean uint8 images [N, H, W, C]."""
        t = self._task(task)
        images = self._check_images(images)
        if task not in self._degrade:
            self._degrade[task] = jax.jit(t.degrade)
        return self._degrade[task](to_float(jnp.asarray(images)), rng)

    def sample(self, task: str, condition: Condition | None = None, labels=None,
               num_samples: int | None = None, rng: jax.Array | None = None, *,
               steps: int | None = None, sampler: str | None = None, eta: float | None = None,
               guidance: float | None = None, self_ensemble: bool | None = None) -> np.ndarray:
        """Samples ``task``'s outputs: uint8 [N, H, W, C].

        Args:
          task: a task name of this run.
          condition: from :meth:`degrade` (restoration tasks).
          labels: int class labels [N] (class-conditional generation).
          num_samples: N for unconditional generation.
          rng: a ``jax.random.key``; sampling is deterministic given it.
          steps: sampler steps; sampler: 'ddim' or 'ddpm'; eta: DDIM stochasticity
            (defaults: the run's evaluation settings, what its metrics were measured
            at: the task's ``sample_steps`` or ``eval.sample_steps``,
            ``diffusion.sampler``, ``diffusion.eta``; ``sampling.settings_for``).
          guidance: classifier-free guidance scale (1 = none, 0 = unconditional;
            default: ``eval.guidance`` for class-conditional generation, else 1).
          self_ensemble: average over the 8 flips and rotations of each condition
            (``mtlgen_jax.ensemble``); default: the run's ``eval.self_ensemble`` for
            restoration tasks.
        """
        t = self._task(task)
        kw = settings_for(t, self.config, steps=steps, sampler=sampler, eta=eta,
                          guidance=guidance, self_ensemble=self_ensemble)
        rng = jax.random.key(0) if rng is None else rng
        s, c = self.info.image_size, self.info.channels
        if labels is not None:
            labels = np.asarray(labels, np.int32).reshape(-1)
            nc = self.info.num_classes or 0
            if not t.class_conditional:
                raise ValueError(f"task {task!r} of this run takes no class labels.")
            if labels.min() < 0 or labels.max() >= nc:
                raise ValueError(f"labels must be in [0, {nc}); got range "
                                 f"[{labels.min()}, {labels.max()}].")
        if condition is None:
            if t.has_condition:
                raise ValueError(f"task {task!r} needs a condition: "
                                 f"run.degrade({task!r}, images, rng).")
            n = len(labels) if labels is not None else num_samples
            if not n:
                raise ValueError("pass labels=... or num_samples=N to generate.")
            zeros = jnp.zeros((n, s, s, c), jnp.float32)
            condition = Condition(image=zeros, mask=jnp.zeros((n, s, s, 1), jnp.float32))
        n = condition.image.shape[0]
        if labels is None:
            labels = np.zeros((n,), np.int32)
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels for {n} conditions.")
        (condition, labels), rows = self._par.shard_rows((condition, labels))
        out = self._sampler(self.params, task, condition, labels, rng, **kw)
        return self._par.gather(to_uint8(out), rows)

    def evaluate(self, split: str = "test", num_batches: int = 4,
                 steps: int | None = None) -> dict[str, float]:
        """Metrics of every task on ``num_batches`` batches of ``split``, sampled at
        ``steps`` (every task; default: each task's own evaluation step count)."""
        cfg = self.config.copy_and_resolve_references()
        cfg.dataset.test_split = split
        return evaluate.evaluate(self.comp, self._sampler, self.params, cfg,
                                 num_batches=num_batches, par=self._par, step=self.step,
                                 steps=steps)

    def restore_image(self, task: str, image, mask=None, *, steps: int | None = None,
                      rng: jax.Array | None = None, sampler: str | None = None,
                      eta: float | None = None, overlap: int | None = None,
                      self_ensemble: bool | None = None) -> np.ndarray:
        """Restores one photograph of any size: uint8 [H', W', C] back.

        Args:
          task: a restoration task of this run.
          image: uint8 [H, W] or [H, W, C]: the noisy photo (denoise), the gray or colour
            photo (colorize), the LOW-resolution photo (super_resolve: the output is
            ``factor`` times larger), the photo with a hole (inpaint).
          mask: inpaint only: [H, W] bool (or uint8, nonzero) with True = missing pixel;
            every other pixel is kept exactly.
          steps: sampler steps (default: the task's ``sample_steps`` or
            ``config.eval.sample_steps``).
          rng: sampling key (default ``jax.random.key(0)``).
          sampler, eta: override ``config.diffusion.sampler`` / ``eta``.
          overlap: pixels shared by neighbouring tiles (default: a quarter tile).
          self_ensemble: average the restorations of the 8 flips and rotations of the
            photo (8x the time; default: the run's ``eval.self_ensemble``).

        An image larger than the model's crop is processed in overlapping tiles, blended
        at every sampler step (``mtlgen_jax.tiling``), sharded over this process's
        devices; a progress bar shows when that takes more than a moment.
        """
        from mtlgen_jax import tiling

        t = self._task(task)
        x = self._check_photo(t, image)
        m = self._check_mask(t, mask, x)
        cond = t.condition(jnp.asarray(to_float(x)), None if m is None else jnp.asarray(m))
        kw = settings_for(t, self.config, steps=steps, sampler=sampler, eta=eta,
                          self_ensemble=self_ensemble)
        steps, sampler, eta, ensembled = (kw["steps"], kw["sampler"], kw["eta"],
                                          kw["self_ensemble"])
        size = self.info.image_size
        overlap = size // 4 if overlap is None else int(overlap)
        rng = jax.random.key(0) if rng is None else rng

        def tiled(c):  # one compiled tiled restoration per image shape
            key = (task, c.image.shape, steps, sampler, eta, overlap)
            if key not in self._restore:
                self._restore[key] = jax.jit(lambda p, c, r: tiling.restore(
                    self.comp, p, self.comp.task_index(task), c, r, steps=steps,
                    sampler=sampler, eta=eta, overlap=overlap,
                    sharding=self._par.batch_sharding,
                    progress=lambda: self._progress[0] and self._progress[0]()))
            return self._restore[key](self.params, c, rng)

        h, w = cond.image.shape[1:3]
        stride = max(size - overlap, 1)
        tiles = len(tiling.tile_starts(h, size, stride)) * len(tiling.tile_starts(w, size, stride))
        calls = (steps if t.objective != "regression" else 1) * (
            ensemble.SIZE if ensembled else 1)
        from tqdm import tqdm

        with tqdm(total=calls, desc=f"restore {task}", disable=tiles * calls < 64,
                  leave=False) as bar:
            self._progress[0] = lambda: bar.update(1)
            try:
                out = ensemble.looped(tiled, cond) if ensembled else tiled(cond)
                out = np.asarray(to_uint8(out))[0]
                jax.effects_barrier()  # the last progress updates
            finally:
                self._progress[0] = None
        return out

    def _check_photo(self, task, image) -> np.ndarray:
        """A user's photo -> uint8 [1, H, W, C] with the channels ``task`` takes here."""
        image = np.asarray(image)
        if image.dtype != np.uint8:
            raise ValueError(f"the image has dtype {image.dtype}; pass uint8 in [0, 255] "
                             "(e.g. np.asarray(PIL.Image.open(path))).")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"the image has shape {image.shape}; pass [H, W] (gray), "
                             "[H, W, 3] (RGB) or [H, W, 4] (RGBA, alpha dropped).")
        image = image[..., :3] if image.shape[-1] == 4 else image
        c = self.info.channels
        takes = task.input_channels
        if image.shape[-1] not in takes:
            kind = {1: "gray", 3: "RGB"}
            raise ValueError(
                f"task {task.name!r} of this run takes {' or '.join(kind[k] for k in takes)} "
                f"images; this one is {kind[image.shape[-1]]}: convert it first (PIL: "
                f"Image.convert('{'L' if c == 1 else 'RGB'}')).")
        return image[None]

    def _check_mask(self, task, mask, image: np.ndarray) -> np.ndarray | None:
        """The hole as float [1, H, W, 1] (1 = missing), or None; clear errors."""
        if not task.takes_mask:
            if mask is not None:
                raise ValueError(f"task {task.name!r} takes no mask; pass mask=None.")
            return None
        if mask is None:
            raise ValueError(f"task {task.name!r} needs mask=: a [H, W] bool array, "
                             "True (or white) = missing pixel.")
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask[..., :1].max(-1) if mask.shape[-1] in (1, 3, 4) else mask
        if mask.shape != image.shape[1:3]:
            raise ValueError(f"the mask is {mask.shape[:2]} but the image is "
                             f"{image.shape[1:3]} (height, width): they must match.")
        hole = mask > (127 if mask.dtype == np.uint8 else 0)
        if not hole.any():
            raise ValueError("the mask marks no missing pixel (True / white = missing).")
        return hole[None, ..., None].astype(np.float32)

    @staticmethod
    def show(*rows, scale: int = 4):
        """A PIL image of rows of uint8 [N, H, W, C] arrays (one row per array)."""
        from PIL import Image

        rows = [np.concatenate(list(np.asarray(r)), axis=1) for r in rows]
        grid = np.concatenate(rows, axis=0)
        if grid.shape[-1] == 1:
            grid = grid[..., 0]
        img = Image.fromarray(grid)
        return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def restore(workdir: str, step: int | None = None, ema: bool = True,
            overrides: dict | None = None) -> Run:
    """Restores a trained run from ``workdir`` for sampling and evaluation.

    Args:
      workdir: a run directory written by ``launch.py`` / ``train_and_evaluate``.
      step: the checkpoint step (default: the latest).
      ema: the EMA parameters (default) or the raw ones.
      overrides: {dotted config key: value} applied on top of the run's config, e.g.
        ``{"dataset.name": "folder", "dataset.folder": "my_photos"}`` to evaluate on
        your own photos; only ``workdir.INFERENCE_KEYS`` may change after training.
    """
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"{workdir} does not exist.")
    config = workdir_lib.load_config(workdir)
    if overrides:
        trained = config
        config = workdir_lib.apply_inference_overrides(config, overrides, mode="restore")
        if config.dataset.channels is None and any(k.startswith("dataset.") for k in overrides):
            # Another dataset: its images are converted to the channels the run learned.
            config.dataset.channels = data.get_info(trained.dataset).channels
    ckpt = Checkpointer(workdir, async_save=False, read_only=True)
    try:
        steps = ckpt.all_steps()
        if not steps:
            raise FileNotFoundError(f"{workdir} holds no checkpoint (nothing under "
                                    f"{ckpt.directory}); train first.")
        step = max(steps) if step is None else int(step)
        if step not in steps:
            raise FileNotFoundError(f"{workdir} has no checkpoint at step {step}; "
                                    f"steps present: {sorted(steps)}.")
        meta = ckpt.restore_meta(step)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"the checkpoint at step {step} has format version "
                             f"{meta.get('format_version')}, this mtlgen_jax reads "
                             f"{FORMAT_VERSION}; use the version that wrote it.")
        info = data.get_info(config.dataset)
        comp = components.build(config, info)
        key = "ema_params" if ema else "params"
        shapes = jax.eval_shape(lambda: components.init_params(comp.model, info,
                                                               jax.random.key(0)))
        par = parallel.Parallel(devices=jax.local_devices())
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=par.replicated), shapes)
        restored = ckpt.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={key: abstract}, partial_restore=True,
                restore_args=ocp.checkpoint_utils.construct_restore_args({key: abstract}))))
        params = restored.state[key]
    finally:
        ckpt.close()
    return Run(config, comp, params, step, workdir, par)
