"""How concentrated each task's relative loss is on the training data, and where to floor it.

    python bench/relative_floor.py --config configs/default.py [--quantiles 0.1,0.25,0.5] \
        [--num_batches 48] [--by_photo] [--json out.json]

``loss='relative'`` weighs each training example by 1 / (its start's squared error +
eps) (``objectives.train_inputs``). A start that is nearly exact -- the upsampling of a
flat crop, the luminance of a nearly gray photograph -- gets a weight up to 1 / eps,
and a few such examples can hold most of a task's loss. For every task with the
relative loss this prints, over ``num_batches`` training batches (their conditions drawn
as in training, no augmentation): the start's PSNR at a few quantiles; the effective
sample size (ESS, ``(sum w)^2 / sum w^2``) of the task's examples in one training batch
under the config's floor and under a floor at each quantile of the start errors
(``tasks.<name>.relative_floor_db``); and the share of the weight held by the 10 % of
examples with the best starts. On ``photo_patches`` it also prints the share of each
task's weight per photograph (``--by_photo``), against its share of the crops.
No model is involved: this reads the data and the tasks only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench import common  # noqa: E402
from mtlgen_jax import components, diffusion, objectives  # noqa: E402
from mtlgen_jax.data import pipeline, sources  # noqa: E402


def start_errors(task, images: np.ndarray, seed: int) -> np.ndarray:
    """Each image's squared error of ``task``'s start against it (masked as in the loss)."""
    x = jnp.asarray(images, jnp.float32) / 127.5 - 1.0
    cond = task.degrade(x, jax.random.key(seed))
    return np.asarray(diffusion.loss(task.start(cond), x, task.loss_mask(cond), kind="l2"))


def ess_per_batch(weights: np.ndarray, k: int, rng: np.random.Generator, draws: int = 2000):
    """Mean effective sample size of ``k`` examples drawn at random (with replacement)."""
    w = weights[rng.integers(0, len(weights), size=(draws, k))]
    return float(np.mean(w.sum(1) ** 2 / np.square(w).sum(1)))


def db(mse):
    return 10.0 * np.log10(4.0 / np.maximum(mse, 1e-12))


def analyse(task, err: np.ndarray, k: int, quantiles, photos=None) -> dict:
    rng = np.random.default_rng(0)
    eps = objectives.relative_eps(task)
    w = 1.0 / (err + eps)
    best = err <= np.quantile(err, 0.1)
    out = {"examples_per_batch": k, "start_psnr_db": {f"{q:g}": float(db(np.quantile(err, q)))
                                                      for q in (0.1, 0.25, 0.5, 0.9)},
           "config_floor_db": float(db(eps)), "ess": ess_per_batch(w, k, rng),
           "best_decile_weight_share": float(w[best].sum() / w.sum()), "floors": {}}
    for q in quantiles:
        floor = float(np.quantile(err, q))
        wq = 1.0 / (err + floor)
        out["floors"][f"{q:g}"] = {"floor_db": float(db(floor)), "ess": ess_per_batch(wq, k, rng),
                                   "best_decile_weight_share": float(wq[best].sum() / wq.sum())}
    if photos is not None:
        names = sorted(set(photos))
        out["by_photo"] = {n: {"crop_share": float(np.mean(photos == n)),
                               "weight_share": float(w[photos == n].sum() / w.sum())}
                           for n in names}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--quantiles", default="0.1,0.25,0.5")
    p.add_argument("--num_batches", type=int, default=48)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--by_photo", action="store_true",
                   help="photo_patches only: each photograph's share of each task's weight")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    config = common.load_config(args.config)
    info = sources.get_info(config.dataset)
    comp = components.build(config, info)
    quantiles = [float(q) for q in args.quantiles.split(",") if q]
    photos = None
    if args.by_photo:
        if config.dataset.name != "photo_patches":
            raise SystemExit("--by_photo reads photo_patches' crops; drop it for "
                             f"dataset.name={config.dataset.name!r}.")
        from mtlgen_jax.data import photo_patches

        rows = list(photo_patches.split_crops("train"))
        images = np.stack([r[3] for r in rows])
        photos = np.asarray([r[1] for r in rows])
    else:
        it = pipeline.create_iterator(config.dataset, "train", batch_size=args.batch,
                                      seed=config.seed, repeat=False, shuffle=True,
                                      process_index=0, process_count=1)
        batches = []
        for _, b in zip(range(args.num_batches), it, strict=False):
            batches.append(b["image"][b["mask"]] if "mask" in b else b["image"])
        images = np.concatenate(batches)
    counts = comp.task_counts
    report = {"config": args.config, "examples": int(len(images)), "tasks": {}}
    for i, task in enumerate(comp.tasks):
        if task.loss != "relative":
            continue
        err = np.concatenate([start_errors(task, images[j:j + 512], seed=1000 * i + j)
                              for j in range(0, len(images), 512)])
        report["tasks"][task.name] = analyse(task, err, int(counts[i]), quantiles, photos)
    for name, r in report["tasks"].items():
        s = r["start_psnr_db"]
        print(f"{name}: {r['examples_per_batch']} per batch; start PSNR dB at quantiles "
              f"0.1/0.25/0.5/0.9: {s['0.1']:.1f} / {s['0.25']:.1f} / {s['0.5']:.1f} / "
              f"{s['0.9']:.1f}")
        print(f"  config floor {r['config_floor_db']:.1f} dB: ESS {r['ess']:.2f}, best decile "
              f"holds {r['best_decile_weight_share']:.2f} of the weight")
        for q, f in r["floors"].items():
            print(f"  floor at quantile {q} ({f['floor_db']:.1f} dB): ESS {f['ess']:.2f}, best "
                  f"decile {f['best_decile_weight_share']:.2f}")
        for n, v in r.get("by_photo", {}).items():
            print(f"    {n:22s} crops {v['crop_share']:.2f}  weight {v['weight_share']:.2f}")
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
