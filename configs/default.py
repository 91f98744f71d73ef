"""Default: four restoration tasks on the embedded `photo_patches`, on a 2-core CPU in ~12 min.

    python launch.py --config configs/default.py --workdir runs/default

One shared U-Net (width 32, 3 levels, 1.12M parameters) with one head per task
learns denoising, inpainting, 2x super-resolution and colorization of 32x32 crops
of scikit-image's photographs at once, 2000 steps of 32 (~11 min here), with FAMO task
weighting; super-resolution, the task that learns slowest, takes 4/7 of every batch.
Every training crop is mirrored left-right at random (`dataset.augment='flip'`).
Each task's objective was chosen by measurement (README "Results", the objectives
table and the super-resolution runs): denoising, colorization and super-resolution walk
a bridge from their start (the noisy / gray image, the back-projection of the
low-resolution image; 1 step = the network's estimate, more steps add detail),
inpainting predicts a correction to a smooth fill of the hole (biharmonic) in one pass.
Every task trains on the relative loss (each example's error over its start's), the
start's error floored at the task's `RELATIVE_FLOORS_DB` (below).
Evaluation runs on held-out photographs (chelsea, coffee) at each task's step count
(denoise 4, colorize 8, super-resolution 1: its fidelity point; 16 steps give its
detailed point), each output the mean over the 8 flips and rotations of its input
(`eval.self_ensemble`), and prints PSNR/SSIM/sharpness beside each task's trivial
baseline and classical method; PNG grids go to `runs/default/samples/`. What to
expect: README "Results".

`get_config("tiny")` shrinks everything for smoke tests; `get_config("vit")` (on the
command line `configs/default.py:vit`, `configs/default.py:vit,tiny`) swaps the U-Net
for the transformer backbone (a DiT, `mtlgen_jax/models/vit.py`; 1.05M parameters).
Measured here (README "Performance" and "The transformer against the U-Net"): its
train step runs 86.4 images/s, 1.20x its PyTorch eager peer and 0.77x the U-Net's;
at the U-Net's wall time (1300 steps against 1700) it scored denoise 27.75, colorize
19.46, inpaint 23.27, super-resolution 32.27 dB (U-Net: 28.12, 18.98, 23.27, 32.47).
"""

import ml_collections
from ml_collections import config_dict

from mtlgen_jax.objective_params import with_objective

# The relative loss (each example's squared error over its start's) floors every start's
# error at this PSNR (tasks.<name>.relative_floor_db; Task): the 25th percentile of each
# task's start PSNR on the training crops (`python bench/relative_floor.py --config
# configs/default.py`, docs/relative_floor.json; inpaint's 30.5 came from an earlier
# pass over fewer crops, the full pass says 31.0). Without it (1e-4, a 46 dB start) the
# near-perfect starts of the training photographs -- flat crops, the synthetic
# colorwheel, the nearly gray hubble_deep_field -- held most of the weight: the best 10 %
# of super-resolution's crops 48 % of it, inpainting's 75 %; hubble's crops 57 % of
# colorize's. Against the same config without them, seeds 0 / 1 / 2 (README "Results"):
# colorize +2.69 / +1.57 / +2.49 dB, super-resolution +0.18 / +0.11 / +0.18, denoise
# +0.10 / 0.00 / +0.14, inpaint -0.02 / -0.01 / -0.01.
RELATIVE_FLOORS_DB = dict(denoise=21.9, inpaint=30.5, super_resolve=38.8, colorize=25.6)


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.batch_size = 32  # global, over all devices of all hosts
    c.num_train_steps = 2000  # ~11 min of training on the README's 2-core CPU
    c.grad_accum_steps = 1  # micro-batches per device per step (a batch larger than memory)
    c.learning_rate = 2e-3
    c.end_learning_rate_factor = 0.05  # cosine decays to this fraction of the peak
    c.warmup_steps = 100
    c.weight_decay = 0.0
    c.grad_clip = 1.0  # global-norm clipping
    c.adam_b1 = 0.9
    c.adam_b2 = 0.99
    c.adam_eps = 1e-8
    c.ema_decay = 0.995
    c.dtype = "float32"  # activations/compute; params and optimizer state stay float32
    c.log_every_steps = 50
    c.eval_every_steps = 2000  # evaluation (and PNG grids) at the end only
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 3
    c.async_checkpoints = True  # write checkpoints in a background thread
    # Resume from this checkpoint step instead of the latest (e.g. the latest is corrupt);
    # later checkpoints are moved to <workdir>/checkpoints_set_aside/, never deleted.
    c.resume_step = config_dict.placeholder(int)
    # Start a fresh run from another run's EMA parameters (its backbone, and the heads of
    # tasks both runs have); 'backbone' in init_from_freeze trains only the heads.
    c.init_from = ""
    c.init_from_freeze = ""

    # Non-finite loss or gradient: 'halt' (stop with an error naming the step and
    # task; the last good checkpoint stays) or 'skip' (drop the update, count it,
    # halt after max_consecutive_skips drops in a row).
    c.nonfinite = ml_collections.ConfigDict(dict(policy="halt", max_consecutive_skips=5))
    # A host sleep after every step (slows a run down, e.g. to interrupt it in a test).
    c.debug = ml_collections.ConfigDict(dict(step_delay_s=0.0))

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "photo_patches"  # 'photo_patches', 'digits', a TFDS catalog name, 'folder'
    c.dataset.data_dir = config_dict.placeholder(str)  # TFDS data dir; None = ~/tensorflow_datasets
    c.dataset.image_size = 32
    c.dataset.channels = config_dict.placeholder(int)  # 1 or 3; None = the dataset's own
    c.dataset.folder = ""  # for name='folder': a directory of images
    c.dataset.test_fraction = 0.1  # for name='folder' without train/ and test/ subfolders
    c.dataset.train_split = "train"
    c.dataset.test_split = "test"
    c.dataset.shuffle_buffer = 10_000
    # Training images under random flips ('flip') or flips and quarter turns ('dihedral'),
    # drawn per example inside the step (step.augment); 'none' for data with an
    # orientation (digits, faces: generate and class labels).
    # 'flip' (left-right mirror) against 'none', seeds 0 / 1 / 2 (README "Results"):
    # colorize +0.12 / +0.48 / +0.71 dB, super-resolution -0.19 / +0.23 / +0.15, denoise
    # -0.09 / -0.01 / -0.10; every target met on seeds 1 and 2 (without it: on seed 0
    # alone). Quarter turns ('dihedral') cost colorize 1.4 dB: skies are at the top.
    c.dataset.augment = "flip"
    # Each training image's contrast scaled by a factor drawn from [augment_contrast, 1]
    # (step.contrast); 1 = off. Seed 0 with 0.5: super-resolution -0.03 dB, colorize
    # -0.38, denoise and inpaint unchanged (README "Results"), so it stays off.
    c.dataset.augment_contrast = 1.0

    # The task mixture: `names` in task-id order; each task's weight is its share
    # of every batch. Parameters not listed take the task's defaults.
    c.tasks = ml_collections.ConfigDict()
    c.tasks.names = "denoise,inpaint,super_resolve,colorize"
    # objective: 'diffusion' | 'regression' | 'bridge'; residual: predict relative to the
    # task's baseline (see mtlgen_jax/objectives.py); consistent: project every estimate
    # onto the images the condition allows (known pixels, low-resolution block means,
    # luminance; see Task.project), also inside the loss; loss: 'l2' | 'l1' | 'relative'
    # (each example's error over its start's: follows the mean PSNR; see Task).
    # loss='relative' on all four, measured against l2 on all four (README "Results"):
    # denoise +0.08 dB, inpaint +0.34, super_resolve +0.21, colorize -0.58 (still met).
    # Mixing them (colorize alone on l2) measured worse: denoise 25.75, colorize 17.71.
    c.tasks.denoise = dict(weight=1.0, objective="bridge", residual=False, loss="relative",
                           sigma_min=0.1, sigma_max=0.4)
    # fill: the start inpainting's residual is learned over (Inpaint.start); 'biharmonic'
    # (thin plate) is +0.6 dB inside the hole over 'harmonic' on train crops.
    c.tasks.inpaint = dict(weight=1.0, objective="regression", residual=True, consistent=True,
                           loss="relative", mask_kinds="box,stroke,half", fill="biharmonic")
    # Super-resolution's share, measured (1500 steps, README "Results"): 1/4 of each batch
    # 32.30 dB, 2/5 32.42, 4/7 32.52, alone 33.23; FAMO keeps its loss weight near 0.1
    # whatever its share, so its examples are what it learns from. On the bridge from its
    # back-projection (gamma 0.1) with 3/4 of its examples at t = 1, its 1-step estimate
    # keeps the one-pass regression's fidelity (the default's evaluation: sample_steps=1)
    # and more steps reach a photo's detail (regression: sharpness 0.50 at any step
    # count): with the floored loss 16 steps give 0.89-0.96 at 2.6-2.8 dB under 1 step
    # (3 seeds; before the floors 25 steps, 0.76-0.86). With the floors every target is
    # met on three seeds (super-resolution +1.03 / +1.19 / +1.20 dB over bicubic); before
    # them, two of three (README "Results").
    c.tasks.super_resolve = dict(weight=4.0, objective="bridge", residual=True,
                                 consistent=True, loss="relative", factor=2, bridge_noise=0.1,
                                 endpoint_fraction=0.75, sample_steps=1)
    # 8 bridge steps for colorize, chosen on train crops (+0.17 dB over 4; 16: +0.02 more).
    c.tasks.colorize = dict(weight=1.0, objective="bridge", residual=False, consistent=True,
                            loss="relative", sample_steps=8)
    c.tasks.generate = dict(weight=1.0, objective="diffusion", label_dropout=0.1)
    for name, floor_db in RELATIVE_FLOORS_DB.items():  # the relative loss's floors, above
        c.tasks[name].relative_floor_db = floor_db

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "cosine"  # 'cosine' | 'linear'
    c.diffusion.prediction = "v"  # "v" | "eps" | "x0"; v keeps x0 well-posed at high noise
    c.diffusion.discrete_steps = 0  # 0: continuous time; N: t in {1/N, ..., 1}
    c.diffusion.sampler = "ddim"  # 'ddim' | 'ddpm'
    c.diffusion.eta = 0.0  # DDIM stochasticity (0 = deterministic)

    c.model = ml_collections.ConfigDict()
    # 'unet' | 'vit' (a DiT over patches: mtlgen_jax/models/vit.py); the U-Net stays the
    # default until the transformer is measured against it.
    c.model.backbone = "unet"
    c.model.width = 32  # U-Net: channels at full resolution; vit: token width
    c.model.channel_mult = (1, 2, 2)  # U-Net levels
    c.model.num_res_blocks = 1  # U-Net
    c.model.attn_resolutions = (8,)  # U-Net: sizes with self-attention
    c.model.dropout = 0.0
    c.model.num_heads = 4  # attention heads (vit: divides width)
    c.model.patch_size = 2  # vit: p x p pixels per token (divides dataset.image_size)
    c.model.depth = 6  # vit: transformer blocks
    c.model.mlp_ratio = 4.0  # vit: MLP hidden size over width
    # vit: None (mtlgen_jax.models.vit.attention, fastest on XLA:CPU), 'xla'
    # (jax.nn.dot_product_attention's XLA implementation), or 'cudnn' (cuDNN flash
    # attention: GPU, bfloat16, head size width/num_heads a multiple of 8 <= 128).
    c.model.attention_impl = config_dict.placeholder(str)
    c.model.head_depth = 0  # extra residual layers in each task's head (0: one output layer)
    # Per-task capacity inside the shared backbone (mtlgen_jax/models/capacity.py), off until
    # measured; both start as the identity, and gradient methods give each task's tables
    # only its own gradient, outside the Gram matrix. task_film (U-Net only: the DiT's
    # adaLN already modulates its norms per task): a per-task scale and shift after each
    # residual block's second GroupNorm, 1,216 parameters per task here. task_lora_rank r:
    # a per-task rank-r update of every U-Net conv (r = 4: 72,572 per task, 6.5% of the
    # shared 1.12M) or of the DiT's attention and MLP layers (`:vit`, r = 4: 36,864 per
    # task, 3.5% of 1.05M); 0 = off. capacity.overhead_per_task(params) counts them.
    c.model.task_film = False
    c.model.task_lora_rank = 0

    c.weighting = ml_collections.ConfigDict()
    c.weighting.name = "famo"  # see mtlgen_jax.weighting.NAMES
    c.weighting.hparams = ""  # the strategy's hyperparameters, e.g. "c=0.4,num_iters=50"
    # Gradient methods: per-task gradients w.r.t. the shared 'params' or the shared
    # 'representation' (the cheap "-ub" mode: one backward pass, like a loss weighting).
    c.weighting.grad_space = "params"

    c.parallel = ml_collections.ConfigDict()
    c.parallel.backend = "shard_map"  # 'shard_map' | 'pmap'
    # CPU hosts: split the cores into this many JAX devices (0 = automatic: up to one per
    # core, at most 8, dividing the batch; 1 = off). XLA's CPU convolutions keep about
    # one core busy per device. Ignored where XLA_FLAGS sets a count, and on GPU/TPU.
    c.parallel.cpu_devices = 0

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 64
    c.eval.num_batches = 2  # test batches per task at the final evaluation (0: no eval)
    c.eval.num_batches_during_training = 1
    # Sampler steps at evaluation of the tasks that set none (bridge: 1 = the network's
    # estimate, more add detail). 4, chosen on train crops (the test crops agree): denoise
    # +0.75 dB over 1 step, its sharpness 0.96 -> 0.81 (a photo: 1); 8 adds nothing.
    c.eval.sample_steps = 4
    c.eval.guidance = 1.0  # classifier-free guidance scale for 'generate' (1 = none)
    # Restoration tasks: the mean over the 8 flips and rotations of each condition
    # (mtlgen_jax/ensemble.py; 8x the sampling compute, no training change). Measured on
    # the default run at 1 step: denoise +0.54 dB, colorize +0.18, super_resolve +0.04,
    # inpaint +0.00 (README "Results").
    c.eval.self_ensemble = True

    words = variants(variant, ("vit", "tiny"), "configs/default.py")
    if "vit" in words:
        use_vit(c)
    if "tiny" in words:
        shrink(c)
    return c


def variants(variant: str, known: tuple[str, ...], path: str) -> set[str]:
    """The comma-separated words of ``path:variant``; an unknown one is refused."""
    words = set(filter(None, variant.split(",")))
    if words - set(known):
        raise ValueError(f"{path}: unknown variant {variant!r}; use a comma-separated subset "
                         f"of {known} (or none).")
    return words


def use_vit(c: ml_collections.ConfigDict, *, width: int = 96, depth: int = 6,
            num_heads: int = 4, attention_impl: str | None = None) -> None:
    """The transformer backbone (`configs/default.py:vit`): by default a DiT of 6 blocks of
    width 96 over 2x2 patches (256 tokens per 32x32 crop) at CPU size, the same tasks and
    training; other configs pass their own size (configs/cifar10.py: DiT-S/2)."""
    c.model.backbone = "vit"
    c.model.width = width
    c.model.num_heads = num_heads
    c.model.patch_size = 2
    c.model.depth = depth
    c.model.mlp_ratio = 4.0
    c.model.dropout = 0.0  # DiT trains without dropout
    c.model.attention_impl = attention_impl


def without_relative_floors(c: ml_collections.ConfigDict) -> None:
    """The relative loss as it was before ``RELATIVE_FLOORS_DB`` (every start's error
    floored at 1e-4 only, a 46 dB start). The configs measured that way keep it
    (configs/photos.py, configs/delta_m.py), so their published numbers stay
    reproducible."""
    for name in RELATIVE_FLOORS_DB:
        c.tasks[name].relative_floor_db = config_dict.placeholder(float)


def one_pass_super_resolve(c: ml_collections.ConfigDict) -> None:
    """The default's objectives before super-resolution moved to the bridge: super-
    resolution a one-pass residual regression, colorize at ``eval.sample_steps``. The
    configs measured with them keep them (configs/photos.py, configs/delta_m.py), so
    their published numbers stay reproducible."""
    c.tasks.super_resolve = with_objective(dict(c.tasks.super_resolve), "regression")
    c.tasks.colorize = {k: v for k, v in dict(c.tasks.colorize).items() if k != "sample_steps"}


def shrink(c: ml_collections.ConfigDict) -> None:
    """A seconds-long run for smoke tests: tiny model, few steps, few samples."""
    c.batch_size = 8
    c.num_train_steps = 4
    c.warmup_steps = 1
    c.log_every_steps = 2
    c.eval_every_steps = 4
    c.checkpoint_every_steps = 2
    c.dataset.image_size = 16
    c.model.width = 8
    # One level, no attention: half the compile time of two levels with attention, which is
    # what the suite's tests spend most of their time on; tests of the U-Net's levels and
    # attention build their own (tests/test_models.py, test_resume_devices.py).
    c.model.channel_mult = (1,)
    c.model.attn_resolutions = ()
    c.model.num_heads = 1
    if c.model.backbone == "vit":
        c.model.depth = 2
    c.eval.batch_size = 8
    c.eval.num_batches = 1
    c.eval.sample_steps = 2
    for name in c.tasks.names.split(","):  # per-task step counts no larger than that
        if c.tasks[name].get("sample_steps"):
            c.tasks[name].sample_steps = min(c.tasks[name].sample_steps, c.eval.sample_steps)
