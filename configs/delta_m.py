"""The Δm experiment: every weighting strategy vs single-task models, on a 2-core CPU.

    python -m mtlgen_jax.experiments.delta_m --config configs/delta_m.py \
        --workdir runs/delta_m --strategies ew,uw,dwa,rlw,gls,famo,gradnorm,pcgrad,\
gradvac,mgda,cagrad,imtl,nash_mtl,aligned_mtl,upgrad,mgda-ub,pcgrad-ub,cagrad-ub

The default config's four restoration tasks on `photo_patches` (32x32) with the
default's objectives as they were when it was measured (`one_pass_super_resolve`:
denoise and colorize on the bridge, inpaint and super-resolution as residual
regressions, each task consistent with its condition and on the relative
loss), evaluated at 1 sampling step -- the fidelity operating point, where every
objective's output is the network's deterministic estimate and evaluation costs one
forward pass: differences between rows are differences of optimisation, not of
sampler noise. No self-ensemble (it would cost 8x the evaluation and measure the
same thing). A narrower U-Net (width 16, 0.28M parameters) and 400 steps at batch 32
keep each model to 2-4 minutes on a 2-core CPU (2 JAX CPU devices).

`configs/delta_m.py:regression` is the setting of the table in the README (measured
before the default's objectives existed): every task a plain regression (the network
predicts the clean image), l2 loss; the whole table (4 single-task models + 18
strategies) took about 77 minutes here.

`configs/delta_m.py:floors` keeps the default's relative-loss floors
(`default.RELATIVE_FLOORS_DB`), which the tables above predate.

`<gradient method>-ub` rows take the method's per-task gradients with respect to
the shared representation (`weighting.grad_space='representation'`).
Results: README, "Multi-task strategies".
"""

from configs import default


def get_config(variant: str = ""):
    c = default.get_config()
    default.one_pass_super_resolve(c)  # the objectives the table was measured with
    c.num_train_steps = 400
    c.batch_size = 32
    c.warmup_steps = 50
    c.learning_rate = 2e-3
    c.log_every_steps = 25
    c.eval_every_steps = 100  # the learning curves (delta_m_curves.png): 1 batch of 64 each
    c.checkpoint_every_steps = 400
    c.keep_checkpoints = 1
    c.model.backbone = "unet"  # measured with the U-Net
    c.model.width = 16
    c.dataset.augment = "none"  # as the tables were measured (the default flips since)
    words = default.variants(variant, ("tiny", "regression", "floors"), "configs/delta_m.py")
    if "floors" not in words:  # the tables were measured before the relative loss's floors
        default.without_relative_floors(c)
    if "regression" in words:
        for name in ("denoise", "inpaint", "super_resolve", "colorize"):
            c.tasks[name] = default.with_objective(c.tasks[name], "regression",
                                                   residual=False, loss="l2")
    c.eval.batch_size = 64
    c.eval.num_batches = 4  # 256 held-out crops per task
    c.eval.sample_steps = 1  # the fidelity point (the bridge's one step is its estimate)
    c.eval.self_ensemble = False
    if "tiny" in words:
        default.shrink(c)
    return c
