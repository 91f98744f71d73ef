"""Train-step throughput of the U-Net and the transformer, beside matmul peaks and PyTorch peers.

    python bench/train_step.py [--json PATH] [--backbones unet,vit] [--steps 24] [--rounds 6]
                               [--no-torch-compile]

Measures, in one process and on the same synthetic batch shape, for each backbone
of ``--backbones``:
  * ``unet``: the JAX train step of ``configs/default.py`` (as ``train.py`` builds it,
    over the CPU devices ``launch.py`` would split the host into: ``--cpu-devices``):
    images/s and achieved FLOP/s, with the step's FLOPs from XLA's cost analysis of
    the compiled executable (the same executable that is timed); with several
    devices, also the same step on one of them (``jax_1dev``); its PyTorch peer
    (``bench/peers/torch_unet.py``: same U-Net, heads, parameter count - asserted -
    and multi-task step), eager and under ``torch.compile``;
  * ``vit``: the same for ``configs/default.py:vit`` (the DiT backbone; contenders
    ``vit_jax``, ``vit_torch_eager``, ``vit_torch_compile``, the peer
    ``bench/peers/torch_dit.py``), plus the FLOP/s XLA reaches on the model's own
    matrix products (``vit_matmul_flops_per_sec``: one transformer block's Dense
    layers and attention at the step's token count, width and MLP width, forward and
    backward products, jitted over the step's devices with the batch split as the
    step splits it), the implementation ``jax.nn.dot_product_attention`` ran
    (``attention_impl``, read from the compiled step), and
  * for both: the step's peak temporary memory per device from
    ``compiled.memory_analysis()`` (``temp_bytes``, ``vit_temp_bytes``);
  * the FLOP/s of a large jitted float32 matmul (the practical peak of this machine
    for XLA), measured before and after the steps (the better is kept); the vit's
    own-shape matmuls likewise.

Timing: ``--warmup`` steps of every contender first, then ``--rounds`` rounds that
each time ``--steps / --rounds`` steps of every contender in turn, the order reversed
every other round (so a change of machine load, and any cost of running first or
after another library, hits all of them alike); each step is blocked on; the median
step time gives images/s. The default, 24 timed steps per contender in 6 rounds of
4, puts each median on 24 samples spread over the whole run; ``step_time_s`` also
gives, per contender, ``halves_ratio``: the median of the first half of the rounds
over that of the second (1.0 = no drift while the run lasted).

Writes ``{"images_per_sec", "flops_per_sec", "matmul_flops_per_sec",
"torch_eager_images_per_sec", "torch_compile_images_per_sec", "temp_bytes",
"vit_images_per_sec", "vit_flops_per_sec", "vit_matmul_flops_per_sec",
"vit_fraction_of_own_matmul", "vit_torch_eager_images_per_sec",
"vit_torch_compile_images_per_sec", "vit_temp_bytes", "attention_impl", ...}`` (null
where not measured: a backbone not in ``--backbones``, torch skipped or
``torch.compile`` failing here).

The first ``torch.compile`` of a model on a machine compiles for minutes (about 4 for
the U-Net on a busy 2-core host); inductor caches it (``/tmp/torchinductor_$USER``),
so later runs take seconds. ``--no-torch-compile`` skips it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from bench import common  # noqa: E402

BACKBONES = ("unet", "vit")
PREFIX = {"unet": "", "vit": "vit_"}  # of contender names and JSON keys
TORCH_NOTES = (
    "Torch peer: same layers, shapes and parameter count (asserted). Differences: "
    "one batched random draw per task instead of a per-example key; torch bicubic "
    "(a=-0.75) vs jax cubic (a=-0.5) for the super-resolution condition; constant lr "
    "(no warmup/cosine schedule); fixed-decay EMA; no update/param-norm metrics; "
    "symmetric padding of the stride-2 conv (same shapes and FLOPs). Degrade, "
    "optimizer and EMA run eager in both torch variants; torch.compile wraps the "
    "model forward + loss (and so its backward)."
)
VIT_TORCH_NOTES = (
    "Torch DiT peer (bench/peers/torch_dit.py): same layers, shapes and parameter count "
    "(asserted; the same forward function as the JAX model with copied weights, tested), "
    "attention through F.scaled_dot_product_attention; the multi-task step is the U-Net "
    "peer's (torch_unet.TorchStep), with the same differences from the JAX step (no "
    "stride-2 conv here). vit_torch_flops_per_step: torch's FlopCounterMode count plus "
    "the attention's matmuls (3x their forward FLOPs), which FlopCounterMode does not "
    "count on CPU."
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--config", default="default",
                   help="configs/<name>.py (vit: its get_config('vit'))")
    p.add_argument("--backbones", default="unet,vit",
                   help="comma-separated: unet (the config), vit (the config's 'vit' variant)")
    p.add_argument("--batch", type=int, default=None, help="override config.batch_size")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="override config.dtype (the torch peers are float32: skipped otherwise)")
    p.add_argument("--steps", type=int, default=24, help="timed steps per contender")
    p.add_argument("--rounds", type=int, default=6, help="interleaved timing rounds")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per contender")
    p.add_argument("--matmul", type=int, default=2048, help="matmul size n for the peak")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers")
    p.add_argument("--no-torch-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--cpu-devices", type=int, default=None,
                   help="JAX CPU devices (config.parallel.cpu_devices; default: the config's, "
                        "0 = automatic as in launch.py; 1 = a single device)")
    p.add_argument("--no-single-device", action="store_true",
                   help="skip the one-device JAX U-Net contender (run when there are several)")
    p.add_argument("--channels-last", action="store_true",
                   help="torch U-Net peer in channels-last memory format (slower on our CPU)")
    args = p.parse_args(argv)
    args.backbones = tuple(b.strip() for b in args.backbones.split(",") if b.strip())
    unknown = set(args.backbones) - set(BACKBONES)
    if unknown or not args.backbones:
        p.error(f"--backbones {','.join(args.backbones)!r}: use one or more of {BACKBONES}")
    return args


def backbone_config(args, backbone: str):
    """``configs/<args.config>.py`` for ``backbone`` (vit: its 'vit' variant), with the flags."""
    config = common.load_config(args.config, "vit" if backbone == "vit" else "")
    if config.model.get("backbone", "unet") != backbone:
        raise ValueError(f"configs/{args.config}.py gives model.backbone="
                         f"{config.model.get('backbone', 'unet')!r} for --backbones {backbone}")
    if args.batch:
        config.batch_size = args.batch
    if args.dtype:
        config.dtype = args.dtype
    if args.cpu_devices is not None:
        config.parallel.cpu_devices = args.cpu_devices
    return config


def temp_bytes(compiled) -> int | None:
    """Peak temporary memory of one device's program (``compiled.memory_analysis()``)."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend / jax version reports it
        return None
    if isinstance(analysis, list | tuple):
        analysis = analysis[0] if analysis else None
    value = getattr(analysis, "temp_size_in_bytes", None)
    return int(value) if value is not None else None


def attention_impl(compiled, configured: str | None) -> str:
    """The attention that ran in a compiled step: 'cudnn' when its program calls cuDNN's
    fused attention, else 'vit.attention' (``model.attention_impl=None``: our head-major
    formulation) or 'xla' (``jax.nn.dot_product_attention``'s XLA implementation)."""
    if "__cudnn$fmha" in compiled.as_text():
        return "cudnn"
    return "vit.attention" if configured is None else "xla"


class JaxContender:
    def __init__(self, config, *, devices=None, name="jax"):
        self.name = name
        self.config = config
        self.bench = common.StepBench(config, common.synthetic_info(config), devices=devices)
        self.batches = self.bench.device_batches(4)
        t0 = time.perf_counter()
        self.compiled = self.bench.compiled(self.batches[0])
        self.compile_s = time.perf_counter() - t0
        self.flops_per_step = self.bench.step_flops(self.compiled)
        self.temp_bytes = temp_bytes(self.compiled)
        self.i = 0

    def step(self):
        b = self.bench
        b.state, metrics = self.compiled(b.state, self.batches[self.i % len(self.batches)])
        self.i += 1
        jax.block_until_ready((b.state, metrics))


class TorchContender:
    def __init__(self, config, *, backbone: str, compile: bool, channels_last: bool = False):
        import torch

        from bench.peers import torch_dit, torch_unet

        self.name = PREFIX[backbone] + ("torch_compile" if compile else "torch_eager")
        torch.manual_seed(0)
        if backbone == "vit":
            self.peer = torch_dit.from_config(config, compile=compile)
        else:
            self.peer = torch_unet.from_config(config, channels_last=channels_last,
                                               compile=compile)
        rng = np.random.default_rng(0)
        s, n = config.dataset.image_size, config.batch_size
        self.batches = [(torch.from_numpy(rng.integers(0, 256, (n, s, s, 3), dtype=np.uint8)),
                         torch.zeros(n, dtype=torch.int32)) for _ in range(4)]
        self.i = 0
        self.compile_s = None
        if compile:  # the first call compiles
            t0 = time.perf_counter()
            self.step()
            self.compile_s = time.perf_counter() - t0

    def step(self):
        self.peer.step(*self.batches[self.i % len(self.batches)])
        self.i += 1

    def count_flops(self) -> float:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            self.step()
        return float(counter.get_total_flops())


def torch_contenders(config, backbone: str, jx: JaxContender, args) -> tuple[list, dict]:
    """The backbone's torch peer, eager (parameter count asserted) and compiled, and its info."""
    import torch

    from bench.peers import torch_dit

    pre = PREFIX[backbone]
    eager = TorchContender(config, backbone=backbone, compile=False,
                           channels_last=args.channels_last)
    if eager.peer.num_params != jx.bench.num_params:
        raise AssertionError(
            f"{backbone} torch peer has {eager.peer.num_params:,} parameters, the JAX model "
            f"{jx.bench.num_params:,}: the peer is not the same model")
    flops = eager.count_flops()
    if backbone == "vit":
        flops += 3 * torch_dit.attention_flops(config)  # not counted by FlopCounterMode on CPU
    info = {f"{pre}torch_num_params": eager.peer.num_params,
            "torch_threads": torch.get_num_threads(),
            f"{pre}torch_flops_per_step": flops,
            f"{pre}torch_notes": VIT_TORCH_NOTES if backbone == "vit" else TORCH_NOTES}
    if backbone == "unet":
        info["torch_channels_last"] = args.channels_last
    out = [eager]
    if not args.no_torch_compile:
        try:
            compiled = TorchContender(config, backbone=backbone, compile=True,
                                      channels_last=args.channels_last)
            out.append(compiled)
            info[f"{pre}torch_compile_time_s"] = compiled.compile_s
            print(f"{backbone} torch.compile: first step {compiled.compile_s:.1f}s")
        except Exception as e:  # noqa: BLE001 - report, keep the other numbers
            info[f"{pre}torch_compile_error"] = f"{type(e).__name__}: {e}"[:2000]
            print(f"{backbone} torch.compile failed: "
                  f"{info[f'{pre}torch_compile_error'][:300]}")
    return out, info


def vit_matmul_flops_per_sec(config, mesh, *, repeats: int = 5) -> dict:
    """FLOP/s of XLA on the vit step's own matrix products.

    One transformer block's (every block has the same shapes): for each Dense layer
    (qkv D -> 3D, proj D -> D, fc1 D -> mlp, fc2 mlp -> D) on the batch's B x T tokens
    its forward product and both backward ones (input and weight gradients), and the
    attention's QK^T and PV with their four backward products, per head. Inputs are
    independent random arrays in the step's dtype, batch-sharded over ``mesh`` as the
    step's batch is (weights replicated; the weight gradients' sum over the batch
    all-reduces, as the step's gradient mean does); one jitted call computes all 18
    products. The heads, the patch embedding and the conditioning MLPs (< 1% of the
    step's matmul FLOPs) are left out. Best of ``repeats`` calls.
    """
    m = config.model
    d, heads = m.width, m.num_heads
    hidden, dh = int(d * m.mlp_ratio), d // m.num_heads
    b, t = config.batch_size, (config.dataset.image_size // m.patch_size) ** 2
    dtype = jnp.dtype(config.dtype)
    batch_sh, repl = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    rng = np.random.default_rng(0)

    def arr(shape, sharding):
        return jax.device_put(rng.standard_normal(shape, np.float32), sharding).astype(dtype)

    layers = ((d, 3 * d), (d, d), (d, hidden), (hidden, d))
    dense_in = [(arr((b, t, i), batch_sh), arr((i, o), repl), arr((b, t, o), batch_sh))
                for i, o in layers]
    attn_in = [arr((b, t, heads, dh), batch_sh) for _ in range(4)]  # q, k, v, d_out
    attn_in += [arr((b, heads, t, t), batch_sh) for _ in range(2)]  # probs, d_scores

    @jax.jit
    def block(dense_in, attn_in):
        outs = []
        for x, w, dy in dense_in:
            outs += [jnp.einsum("bti,io->bto", x, w),  # forward
                     jnp.einsum("bto,io->bti", dy, w),  # input gradient
                     jnp.einsum("bti,bto->io", x, dy)]  # weight gradient
        q, k, v, do, probs, ds = attn_in
        outs += [jnp.einsum("bqhd,bkhd->bhqk", q, k), jnp.einsum("bhqk,bkhd->bqhd", probs, v),
                 jnp.einsum("bqhd,bkhd->bhqk", do, v), jnp.einsum("bhqk,bqhd->bkhd", probs, do),
                 jnp.einsum("bhqk,bkhd->bqhd", ds, k), jnp.einsum("bhqk,bqhd->bkhd", ds, q)]
        return outs

    compiled = block.lower(dense_in, attn_in).compile()
    times = common.time_fn(lambda: compiled(dense_in, attn_in), warmup=1, repeats=repeats)
    dense_flops = sum(3 * 2.0 * b * t * i * o for i, o in layers)
    attn_flops = 6 * 2.0 * b * heads * t * t * dh
    flops = dense_flops + attn_flops
    xla = common.cost_flops(compiled)
    return {"flops_per_sec": flops / min(times),
            "flops_per_sec_median": flops / statistics.median(times),
            "flops": flops, "attention_share_of_flops": attn_flops / flops,
            "xla_cost_flops": xla * mesh.size if xla else None,
            "tokens": b * t, "tokens_per_device": b * t // mesh.size, "width": d,
            "mlp_width": hidden, "heads": heads, "head_size": dh, "dtype": dtype.name,
            "devices": mesh.size}


def time_interleaved(contenders, *, steps: int, rounds: int, warmup: int) -> dict:
    """Seconds of each timed step per contender, rounds in alternating order.

    Returns ``{name: [[round 0 times], [round 1 times], ...]}``.
    """
    for c in contenders:
        for _ in range(warmup):
            c.step()
    times = {c.name: [] for c in contenders}
    per_round = max(1, steps // rounds)
    for r in range(rounds):
        order = contenders if r % 2 == 0 else contenders[::-1]
        for c in order:
            ts = []
            for _ in range(per_round):
                t0 = time.perf_counter()
                c.step()
                ts.append(time.perf_counter() - t0)
            times[c.name].append(ts)
    return times


def step_stats(rounds: list[list[float]]) -> dict:
    """``common.stats`` of all timed steps, plus ``halves_ratio`` (drift over the run)."""
    flat = [t for ts in rounds for t in ts]
    out = common.stats(flat)
    half = len(rounds) // 2
    first = [t for ts in rounds[:half] for t in ts]
    second = [t for ts in rounds[len(rounds) - half:] for t in ts]
    out["halves_ratio"] = (statistics.median(first) / statistics.median(second)
                           if first and second else None)
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    configs = {bb: backbone_config(args, bb) for bb in args.backbones}
    from mtlgen_jax import cpu_devices

    # As launch.py does (before JAX starts its backend); both configs split alike.
    cpu_devices.configure(configs[args.backbones[0]])
    if any(c.dtype != "float32" for c in configs.values()) and not args.no_torch:
        print("dtype not float32: the float32 torch peers are skipped (not comparable)")
        args.no_torch = True
    for bb, config in configs.items():
        m = config.model
        size = (f"width {m.width}, depth {m.depth}, patch {m.patch_size}" if bb == "vit"
                else f"width {m.width}")
        print(f"{bb} (configs/{args.config}.py{':vit' if bb == 'vit' else ''}): batch "
              f"{config.batch_size}, {config.dataset.image_size}px, tasks "
              f"{config.tasks.names}, {size}")
    print(f"{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} CPUs")

    peak_before = common.matmul_flops_per_sec(args.matmul)
    contenders, jaxes, torch_info = [], {}, {}
    for bb, config in configs.items():
        pre = PREFIX[bb]
        jx = JaxContender(config, name=f"{pre}jax")
        jaxes[bb] = jx
        print(f"{bb} jax: {jx.bench.num_params:,} params, compile {jx.compile_s:.1f}s, "
              f"{(jx.flops_per_step or 0) / 1e9:.2f} GFLOP/step (XLA cost analysis), temp "
              f"{(jx.temp_bytes or 0) / 2**20:.1f} MiB/device")
        contenders.append(jx)
        if bb == "unet" and jax.device_count() > 1 and not args.no_single_device:
            # The same step on one of the CPU devices: what the split into devices buys.
            contenders.append(JaxContender(config, devices=jax.devices()[:1], name="jax_1dev"))
        if not args.no_torch:
            import torch

            torch.set_num_threads(os.cpu_count())
            peers, info = torch_contenders(config, bb, jx, args)
            contenders += peers
            torch_info.update(info)
    vit = jaxes.get("vit")
    own_before = own_after = None
    if vit:
        own_before = vit_matmul_flops_per_sec(vit.config, vit.bench.par.mesh)

    times = time_interleaved(contenders, steps=args.steps, rounds=args.rounds,
                             warmup=args.warmup)
    peak_after = common.matmul_flops_per_sec(args.matmul)
    if vit:
        own_after = vit_matmul_flops_per_sec(vit.config, vit.bench.par.mesh)

    st = {name: step_stats(ts) for name, ts in times.items()}
    ips = {}
    for c in contenders:
        config = configs["vit" if c.name.startswith("vit_") else "unet"]
        ips[c.name] = config.batch_size / st[c.name]["median_s"]
    peak = max(peak_before["flops_per_sec"], peak_after["flops_per_sec"])

    def jax_flops_per_sec(jx):
        return jx.flops_per_step / st[jx.name]["median_s"] if jx and jx.flops_per_step else None

    unet, unet_config = jaxes.get("unet"), configs.get("unet")
    flops_per_sec = jax_flops_per_sec(unet)
    result = {
        "images_per_sec": ips.get("jax"),
        "flops_per_sec": flops_per_sec,
        "matmul_flops_per_sec": peak,
        "jax_single_device_images_per_sec": ips.get("jax_1dev"),
        "jax_devices_over_single_device": common.ratio(ips.get("jax"), ips.get("jax_1dev")),
        "torch_eager_images_per_sec": ips.get("torch_eager"),
        "torch_compile_images_per_sec": ips.get("torch_compile"),
        "fraction_of_matmul_peak": common.ratio(flops_per_sec, peak),
        "jax_over_torch_eager": common.ratio(ips.get("jax"), ips.get("torch_eager")),
        "jax_over_torch_compile": common.ratio(ips.get("jax"), ips.get("torch_compile")),
        "temp_bytes": unet.temp_bytes if unet else None,
        "batch_size": (unet_config or configs["vit"]).batch_size,
        "jax_devices": jax.device_count(),
        "image_size": (unet_config or configs["vit"]).dataset.image_size,
        "dtype": (unet_config or configs["vit"]).dtype,
        "tasks": str((unet_config or configs["vit"]).tasks.names),
        "num_params": unet.bench.num_params if unet else None,
        "flops_per_step": unet.flops_per_step if unet else None,
        "flops_per_image": common.ratio(unet.flops_per_step, unet_config.batch_size)
        if unet else None,
        "jax_compile_time_s": unet.compile_s if unet else None,
    }
    vit_config = configs.get("vit")
    vit_flops_per_sec = jax_flops_per_sec(vit)
    own = (max(own_before, own_after, key=lambda r: r["flops_per_sec"]) if vit else None)
    result.update({
        "vit_images_per_sec": ips.get("vit_jax"),
        "vit_flops_per_sec": vit_flops_per_sec,
        "vit_matmul_flops_per_sec": own["flops_per_sec"] if own else None,
        "vit_fraction_of_own_matmul": common.ratio(vit_flops_per_sec,
                                                   own["flops_per_sec"] if own else None),
        "vit_fraction_of_matmul_peak": common.ratio(vit_flops_per_sec, peak),
        "vit_torch_eager_images_per_sec": ips.get("vit_torch_eager"),
        "vit_torch_compile_images_per_sec": ips.get("vit_torch_compile"),
        "vit_over_torch_eager": common.ratio(ips.get("vit_jax"), ips.get("vit_torch_eager")),
        "vit_over_torch_compile": common.ratio(ips.get("vit_jax"),
                                               ips.get("vit_torch_compile")),
        "vit_over_unet": common.ratio(ips.get("vit_jax"), ips.get("jax")),
        "vit_temp_bytes": vit.temp_bytes if vit else None,
        "attention_impl": (attention_impl(vit.compiled, vit.config.model.attention_impl)
                           if vit else None),
        "vit_attention_impl_config": vit_config.model.attention_impl if vit else None,
        "vit_batch_size": vit_config.batch_size if vit else None,
        "vit_num_params": vit.bench.num_params if vit else None,
        "vit_flops_per_step": vit.flops_per_step if vit else None,
        "vit_flops_per_image": common.ratio(vit.flops_per_step, vit_config.batch_size)
        if vit else None,
        "vit_compile_time_s": vit.compile_s if vit else None,
        "vit_model": {k: vit_config.model[k] for k in ("width", "depth", "num_heads",
                                                       "patch_size", "mlp_ratio")}
        if vit else None,
        "vit_matmul": {"before": own_before, "after": own_after} if vit else None,
    })
    result.update({
        "step_time_s": st,
        "matmul": {"before": peak_before, "after": peak_after},
        "steps": args.steps, "rounds": args.rounds, "warmup": args.warmup,
        "order": "alternating (reversed every other round)",
        "backbones": ",".join(args.backbones),
        "config": args.config,
        "jax_threads": os.cpu_count(),  # XLA:CPU's default intra-op pool: one thread per CPU
        **torch_info,
    })

    rows = []
    for name in times:
        s = st[name]
        pre = "vit_" if name.startswith("vit_") else ""
        jx = jaxes["vit" if pre else "unet"]
        fl = (jx.flops_per_step if "jax" in name
              else torch_info.get(f"{pre}torch_flops_per_step"))
        rows.append([name, ips[name], s["median_s"], s["min_s"], s["max_s"], s["halves_ratio"],
                     fl / s["median_s"] / 1e9 if fl else None,
                     ips[name] / ips[f"{pre}jax"]])
    common.print_table(rows, ["impl", "images/s", "median s", "min s", "max s", "halves",
                              "GFLOP/s", "vs its jax"], title="train step")
    print(f"matmul {args.matmul}^3 f32: {peak / 1e9:.1f} GFLOP/s (before "
          f"{peak_before['flops_per_sec'] / 1e9:.1f}, "
          f"after {peak_after['flops_per_sec'] / 1e9:.1f})"
          + (f"; the U-Net step reaches {100 * (result['fraction_of_matmul_peak'] or 0):.1f}%"
             " of it" if unet else ""))
    if vit:
        print(f"vit's own matmul shapes ({own['tokens']} tokens x {own['width']} / "
              f"{own['mlp_width']}, attention {own['heads']} x {own['head_size']}): "
              f"{own['flops_per_sec'] / 1e9:.1f} GFLOP/s; the vit step reaches "
              f"{100 * (result['vit_fraction_of_own_matmul'] or 0):.1f}% of it; attention "
              f"{result['attention_impl']}; temp {(vit.temp_bytes or 0) / 2**20:.1f} MiB/device")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    from mtlgen_jax import cpu_devices as _cpu

    _cpu.reexec_with_huge_pages()  # XLA:CPU step buffers on huge pages (see the module)
    main()
