"""All five tasks on CIFAR-10 (32x32 RGB, 10 classes), for GPU/TPU hosts.

    python launch.py --config configs/cifar10.py --workdir runs/cifar10

Downloads CIFAR-10 through TFDS on first use (set --config.dataset.data_dir to a
prepared directory on hosts without internet). A DDPM-sized U-Net (width 128,
~35M parameters, attention at 16x16), bfloat16 compute, global batch 256 over
every device of every host, 200k steps. Class-conditional generation with
classifier-free guidance, inpainting, 2x super-resolution, colorization and
denoising, with equal task weights (try --config.weighting.name=famo or
nash_mtl); training images mirrored left-right at random (the default's
`dataset.augment='flip'`, as DDPM trained on CIFAR-10). On one H100 expect several
steps per second; use --distributed on pods.

`configs/cifar10.py:vit` swaps the U-Net for a DiT-S/2 transformer backbone
(`mtlgen_jax/models/vit.py`, 32.6M parameters; cuDNN attention on GPUs). Neither
variant has been timed on an accelerator yet (`python bench/gpu.py` is sized to do it in
under 4 minutes on a lent H100/H200; no accelerator was lent to the sessions so far); the
CPU-sized pair, `configs/default.py` and its `:vit`, is measured in the README.
"""

from configs import default


def get_config(variant: str = ""):
    c = default.get_config()
    c.dataset.name = "cifar10"
    c.dataset.image_size = 32
    c.batch_size = 256
    c.num_train_steps = 200_000
    c.learning_rate = 2e-4
    c.warmup_steps = 5000
    c.ema_decay = 0.9999
    c.dtype = "bfloat16"
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 5000
    c.tasks.names = "generate,inpaint,super_resolve,colorize,denoise"
    for name in ("denoise", "inpaint", "super_resolve", "colorize"):  # Palette's diffusion
        c.tasks[name] = default.with_objective(c.tasks[name], "diffusion", residual=False,
                                               loss="l2")
    c.weighting.name = "ew"
    c.model.backbone = "unet"
    c.model.width = 128
    c.model.channel_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.1
    c.eval.batch_size = 256
    c.eval.num_batches = 4
    c.eval.sample_steps = 100
    c.eval.guidance = 2.0
    c.eval.self_ensemble = False  # Palette-style diffusion samples: an average would blur them
    words = default.variants(variant, ("vit", "tiny"), "configs/cifar10.py")
    if "vit" in words:
        # DiT-S/2 (Peebles & Xie, 2023): 12 blocks of width 384, 6 heads of 64, 2x2
        # patches (256 tokens), ~33M parameters like the U-Net; cuDNN flash attention in
        # bfloat16 on GPUs (XLA's attention elsewhere).
        default.use_vit(c, width=384, depth=12, num_heads=6, attention_impl="cudnn")
    if "tiny" in words:
        default.shrink(c)
    return c
