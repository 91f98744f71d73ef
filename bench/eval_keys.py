"""Inpainting's fill alone under the Δm evaluation, keyed by task position or by task.

    python bench/eval_keys.py docs/eval_keys.json

The untrained model of `configs/delta_m.py` (residual heads start at zero, so every
inpainting output is its fill) is evaluated like the Δm table's final evaluation, with
inpainting alone and second of four tasks, seeds 0-2, once with the evaluation draws keyed
by the task's position in the run's task list (how the tables before
docs/delta_m_task_keyed.md were measured) and once by the task (``evaluate.task_key``).
Keyed by position, a specialist and a multi-task model are scored on different holes.
"""

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from configs import delta_m  # noqa: E402
from mtlgen_jax import evaluate, train  # noqa: E402

TASK_LISTS = ("inpaint", "denoise,inpaint,super_resolve,colorize")


def fill_alone(names: str, seed: int) -> float:
    c = delta_m.get_config()
    c.tasks.names, c.seed = names, seed
    with tempfile.TemporaryDirectory() as wd:
        tr = train.Trainer(c, wd)
        state, _ = tr.initial_state()
        r = evaluate.evaluate(tr.comp, tr.sampler, tr.par.replicated_copy(state.ema_params), c,
                              num_batches=c.eval.num_batches, par=tr.par)
    return r["eval/inpaint/psnr"]


def main(out_path: str) -> None:
    by_task = evaluate.task_key  # evaluate() looks it up at call time: swapped below
    out = {}
    try:
        for keying in ("position", "task"):
            for names in TASK_LISTS:
                evaluate.task_key = names.split(",").index if keying == "position" else by_task
                psnr = [fill_alone(names, seed) for seed in (0, 1, 2)]
                out[f"{keying}: {names}"] = psnr
                print(f"keyed by {keying}, tasks {names}: {np.mean(psnr):.3f} ± "
                      f"{np.std(psnr, ddof=1):.3f} dB {np.round(psnr, 3).tolist()}", flush=True)
    finally:
        evaluate.task_key = by_task
    Path(out_path).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "eval_keys.json")
