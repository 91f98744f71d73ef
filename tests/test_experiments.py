"""The Δm experiment (formula, table, orchestration, CLI) and the two-task toy."""

import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from configs import default
from mtlgen_jax.experiments import delta_m as dm
from mtlgen_jax.experiments import delta_m_plots as dm_plots
from mtlgen_jax.experiments import toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- Δm formula -----------------------------------------------------------------------
def test_delta_m_mixed_directions_hand_computed():
    reference = {"a/psnr": 20.0, "b/frechet": 10.0, "c/accuracy": 0.5}
    results = {"a/psnr": 22.0, "b/frechet": 12.0, "c/accuracy": 0.45}
    hib = {"a/psnr": True, "b/frechet": False, "c/accuracy": True}
    # a: +10% (higher is better, higher); b: -20% (lower is better, higher); c: -10%.
    assert dm.delta_m(results, reference, hib) == pytest.approx((10.0 - 20.0 - 10.0) / 3)
    # A lower Fréchet distance counts as an improvement.
    assert dm.delta_m({"b/frechet": 8.0}, reference, {"b/frechet": False}) == pytest.approx(20.0)
    assert dm.delta_m(reference, reference, hib) == 0.0


def test_delta_m_refuses_bad_input():
    with pytest.raises(ValueError, match="missing from the results"):
        dm.delta_m({}, {"a/psnr": 1.0}, {"a/psnr": True})
    with pytest.raises(ValueError, match="cannot be divided"):
        dm.delta_m({"a/psnr": 1.0}, {"a/psnr": 0.0}, {"a/psnr": True})
    with pytest.raises(ValueError, match="at least one metric"):
        dm.delta_m({}, {}, {})


def test_primary_metrics_skip_generate_without_accuracy():
    ref = {"denoise/psnr": 20.0, "denoise/ssim": 0.5, "generate/frechet": 3.0}
    assert dm.primary_metrics(["denoise", "generate"], ref) == {"denoise/psnr": True}
    ref["generate/accuracy"] = 0.9
    assert dm.primary_metrics(["denoise", "generate"], ref) == {
        "denoise/psnr": True, "generate/accuracy": True}


# --- the table ------------------------------------------------------------------------
def test_table_writer_columns_and_values(tmp_path):
    single = {"denoise": ({"denoise/psnr": 20.0, "denoise/ssim": 0.5,
                           "denoise/psnr_baseline": 15.0}, 0.10),
              "generate": ({"generate/accuracy": 0.8, "generate/frechet": 4.0}, 0.12)}
    multi = {"ew": ({"denoise/psnr": 22.0, "denoise/ssim": 0.6, "generate/accuracy": 0.6,
                     "generate/frechet": 5.0}, 0.2),
             "famo": ({"denoise/psnr": 20.0, "denoise/ssim": 0.5, "generate/accuracy": 0.8,
                       "generate/frechet": 4.0}, 0.3)}
    rows, keys, used = dm.build_rows(["denoise", "generate"], single, multi)
    assert keys == ["denoise/psnr", "denoise/ssim", "generate/accuracy", "generate/frechet"]
    assert used == {"denoise/psnr": True, "generate/accuracy": True}
    md_path, csv_path = dm.write_tables(str(tmp_path), rows, keys, "# notes")
    with open(csv_path) as f:
        table = list(csv.reader(f))
    assert table[0] == ["method", *keys, "delta_m_pct", "step_ms", "step_time_vs_ew"]
    assert [r[0] for r in table[1:]] == ["single-task", "ew", "famo"]
    by_method = {r[0]: dict(zip(table[0], r)) for r in table[1:]}
    assert float(by_method["ew"]["delta_m_pct"]) == pytest.approx((10.0 - 25.0) / 2)
    assert float(by_method["famo"]["delta_m_pct"]) == 0.0
    assert float(by_method["single-task"]["step_ms"]) == pytest.approx(220.0)  # 2 models
    assert float(by_method["ew"]["step_time_vs_ew"]) == 1.0
    assert float(by_method["famo"]["step_time_vs_ew"]) == pytest.approx(1.5)
    md = open(md_path).read().splitlines()
    assert md[0] == "# notes"
    header = next(line for line in md if line.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == table[0]
    assert sum(line.startswith("| ") for line in md) == 1 + 3  # header + rows


def test_seeds_give_mean_and_sample_std_and_delta_m_against_the_mean_reference(tmp_path):
    single = {"denoise": [({"denoise/psnr": 20.0}, 0.1), ({"denoise/psnr": 22.0}, 0.1)],
              "inpaint": [({"inpaint/psnr": 10.0}, 0.2), ({"inpaint/psnr": 10.0}, 0.2)]}
    multi = {"ew": [({"denoise/psnr": 21.0, "inpaint/psnr": 11.0}, 0.3),
                    ({"denoise/psnr": 23.1, "inpaint/psnr": 9.0}, 0.3)],
             "famo": ({"denoise/psnr": 21.0, "inpaint/psnr": 10.0}, 0.4)}  # one seed
    rows, keys, _ = dm.build_rows(["denoise", "inpaint"], single, multi)
    ref, ew, famo = rows
    assert ref.metrics == {"denoise/psnr": 21.0, "inpaint/psnr": 10.0} and ref.seeds == 2
    assert ref.metrics_std["denoise/psnr"] == pytest.approx(math.sqrt(2.0))  # (20, 22): n - 1
    assert ref.step_ms == pytest.approx(300.0)  # the two specialists' mean step times
    # Each seed's Δm against the reference means (21, 10): seed 0 (0 + 10)/2 = 5,
    # seed 1 (10 - 10)/2 = 0 -> 2.5 ± std(5, 0).
    assert ew.delta_m == pytest.approx(2.5)
    assert ew.delta_m_std == pytest.approx(math.sqrt(12.5))
    assert ew.metrics["denoise/psnr"] == pytest.approx(22.05) and ew.seeds == 2
    assert famo.seeds == 1 and math.isnan(famo.delta_m_std) and famo.metrics_std == {}
    md_path, csv_path = dm.write_tables(str(tmp_path), rows, keys)
    with open(csv_path) as f:
        table = list(csv.reader(f))
    assert table[0] == ["method", "seeds", "denoise/psnr", "denoise/psnr_std", "inpaint/psnr",
                        "inpaint/psnr_std", "delta_m_pct", "delta_m_pct_std", "step_ms",
                        "step_time_vs_ew"]
    assert table[3][1] == "1" and table[3][3] == ""  # one seed: no std
    assert "| ew | 2 | 22.0500 ± 1.4849 |" in open(md_path).read()


# --- orchestration with a fake trainer ------------------------------------------------
def _fake_metrics(cfg):
    """Deterministic final metrics: single-task PSNR 20; ew 22 / 19; others 20."""
    tasks = cfg.tasks.names.split(",")
    psnr = {t: 20.0 for t in tasks}
    if len(tasks) > 1 and cfg.weighting.name == "ew":
        psnr = {"denoise": 22.0, "inpaint": 19.0}
    return {f"eval/{t}/{m}": v for t in tasks for m, v in
            (("psnr", psnr[t]), ("ssim", 0.5), ("psnr_baseline", 10.0))}


class FakeTrainer:
    """Writes what `train_and_evaluate` leaves behind: metrics.jsonl and the checkpoint."""

    def __init__(self):
        self.calls = []

    def __call__(self, cfg, workdir, *, write_eval=True):
        self.calls.append((os.path.basename(workdir), cfg))
        os.makedirs(os.path.join(workdir, "checkpoints", str(cfg.num_train_steps)))
        rate = {"ew": 100.0, "famo": 80.0}.get(cfg.weighting.name, 100.0)
        rows = [{"step": 1, "loss": 1.0, "images_per_sec": 1.0},  # the compile window
                {"step": 2, "loss": 1.0, "images_per_sec": rate},
                {"step": 3, "loss": 1.0, "images_per_sec": rate}]
        if write_eval:
            rows.append({"step": cfg.num_train_steps, **_fake_metrics(cfg)})
        with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


def _config(cagrad_c=None):
    c = default.get_config("tiny")
    c.tasks.names = "denoise,inpaint"
    if cagrad_c is not None:
        c.weighting.c = cagrad_c  # a cagrad hyperparameter: must reach cagrad only
    return c


def test_orchestration_trains_each_run_once_and_reuses_them(tmp_path):
    workdir = str(tmp_path / "dm")
    train = FakeTrainer()
    no_eval = lambda *a, **k: pytest.fail("eval_fn called for a finished run")
    rows = dm.run_experiment(_config(0.25), workdir, "ew,famo,cagrad,cagrad-ub", steps=3,
                             train_fn=train, eval_fn=no_eval)["A"]
    names = [n for n, _ in train.calls]
    assert names == ["single_denoise", "single_inpaint", "mtl_ew", "mtl_famo", "mtl_cagrad",
                     "mtl_cagrad-ub"]
    cfgs = dict(train.calls)
    assert cfgs["single_inpaint"].tasks.names == "inpaint"
    params = {"grad_space": "params"}
    assert cfgs["single_inpaint"].weighting.to_dict() == {"name": "ew", **params}
    assert cfgs["mtl_famo"].tasks.names == "denoise,inpaint"
    assert cfgs["mtl_famo"].weighting.to_dict() == {"name": "famo", **params}
    assert cfgs["mtl_cagrad"].weighting.to_dict() == {"name": "cagrad", "c": 0.25, **params}
    assert cfgs["mtl_cagrad-ub"].weighting.to_dict() == {
        "name": "cagrad", "c": 0.25, "grad_space": "representation"}
    assert {c.num_train_steps for c in cfgs.values()} == {3}
    assert {c.batch_size for c in cfgs.values()} == {8}  # the same budget for all
    by_method = {r.method: r for r in rows}
    assert by_method["single-task"].metrics == {
        "denoise/psnr": 20.0, "denoise/ssim": 0.5, "denoise/psnr_baseline": 10.0,
        "inpaint/psnr": 20.0, "inpaint/ssim": 0.5, "inpaint/psnr_baseline": 10.0}
    assert by_method["ew"].delta_m == pytest.approx((10.0 - 5.0) / 2)
    assert by_method["famo"].delta_m == 0.0
    # Step time: the windows after the first only (8 images / 100 or 80 images/s).
    assert by_method["ew"].step_ms == pytest.approx(80.0)
    assert by_method["famo"].time_vs_base == pytest.approx(1.25)
    assert os.path.exists(os.path.join(workdir, "delta_m.md"))
    with open(os.path.join(workdir, "delta_m.csv")) as f:
        assert next(csv.reader(f))[1:5] == ["denoise/psnr", "denoise/ssim", "inpaint/psnr",
                                            "inpaint/ssim"]

    # A second call reuses every finished run.
    again = FakeTrainer()
    dm.run_experiment(_config(0.25), workdir, "ew,famo,cagrad,cagrad-ub", steps=3, train_fn=again,
                      eval_fn=no_eval)
    assert again.calls == []


def test_orchestration_runs_seeds_both_budgets_and_the_equal_parameter_row(tmp_path):
    workdir = str(tmp_path / "dm")
    train = FakeTrainer()
    config = _config()
    config.warmup_steps = 4
    out = dm.run_experiment(config, workdir, "ew,famo", steps=4, seeds=(0, 1),
                            seeded=("ew",), budgets=("A", "B"), equal_params_width=32,
                            train_fn=train, eval_fn=lambda *a, **k: None)
    cfgs = dict(train.calls)
    assert list(cfgs) == [
        "single_denoise", "single_denoise_seed1", "single_inpaint", "single_inpaint_seed1",
        "single_denoise_B", "single_denoise_B_seed1", "single_inpaint_B",
        "single_inpaint_B_seed1", "mtl_ew", "mtl_ew_seed1", "mtl_famo", "mtl_ew-w32",
        "mtl_ew-w32_seed1"]
    assert cfgs["single_denoise_seed1"].seed == 1 and cfgs["mtl_ew"].seed == 0
    # Budget B: each of the two specialists gets half the steps (equal examples per task).
    assert cfgs["single_inpaint_B"].num_train_steps == 2
    # ... on the same schedule, compressed: the warmup scales with the steps.
    assert cfgs["single_inpaint"].warmup_steps == 4 and cfgs["single_inpaint_B"].warmup_steps == 2
    assert cfgs["single_inpaint"].num_train_steps == cfgs["mtl_famo"].num_train_steps == 4
    assert cfgs["mtl_ew-w32"].model.width == 32 and cfgs["mtl_ew"].model.width == 8
    assert cfgs["mtl_ew-w32"].weighting.name == "ew"
    assert set(out) == {"A", "B"}
    for b, name in (("A", "delta_m.csv"), ("B", "delta_m_B.csv")):
        assert [r.method for r in out[b]] == ["single-task", "ew", "famo", "ew-w32"]
        assert [r.seeds for r in out[b]] == [2, 2, 1, 2]
        assert os.path.exists(os.path.join(workdir, name))
    assert "Budget B, equal examples per task" in open(os.path.join(workdir,
                                                                   "delta_m_B.md")).read()
    if importlib.util.find_spec("matplotlib"):  # the pictures need the bench extra
        for name in ("delta_m_tradeoff.png", "delta_m_curves.png"):
            assert os.path.getsize(os.path.join(workdir, name)) > 0
    # The fake metrics do not depend on the seed or the steps: Δm as with one seed.
    assert out["B"][1].delta_m == pytest.approx((10.0 - 5.0) / 2)
    assert out["B"][1].delta_m_std == 0.0
    again = FakeTrainer()
    dm.run_experiment(_config(), workdir, "ew,famo", steps=4, seeds=(0, 1), seeded=("ew",),
                      budgets=("A", "B"), equal_params_width=32, train_fn=again,
                      eval_fn=lambda *a, **k: None)
    assert again.calls == []  # every finished run reused
    with pytest.raises(ValueError, match="--seeded names 'pcgrad'"):
        dm.run_experiment(_config(), workdir, "ew", seeded=("pcgrad",), train_fn=again,
                          eval_fn=again)
    with pytest.raises(ValueError, match="use A .* and/or B"):
        dm.run_experiment(_config(), workdir, "ew", budgets=("C",), train_fn=again,
                          eval_fn=again)


def test_finished_only_tables_leave_unfinished_runs_out_and_train_nothing(tmp_path):
    workdir = str(tmp_path / "dm")
    kw = dict(steps=4, seeds=(0, 1), seeded=("ew",), eval_fn=pytest.fail)
    dm.run_experiment(_config(), workdir, "ew", **kw, train_fn=FakeTrainer())
    shutil.rmtree(os.path.join(workdir, "mtl_ew_seed1", "checkpoints"))  # unfinished now
    out = dm.run_experiment(_config(), workdir, "ew,famo", **kw, train_fn=pytest.fail,
                            finished_only=True)  # famo: never trained
    assert [(r.method, r.seeds) for r in out["A"]] == [("single-task", 2), ("ew", 1)]
    shutil.rmtree(os.path.join(workdir, "single_inpaint_seed1", "checkpoints"))
    out = dm.run_experiment(_config(), workdir, "ew", **kw, train_fn=pytest.fail,
                            finished_only=True)  # inpaint's specialist: seed 0 only
    ref = out["A"][0]
    assert ref.seeds == 1 and math.isfinite(ref.metrics_std["denoise/psnr"])
    assert math.isnan(ref.metrics_std["inpaint/psnr"])  # one seed: a bare mean
    shutil.rmtree(os.path.join(workdir, "single_inpaint", "checkpoints"))
    with pytest.raises(RuntimeError, match="no finished single-task run of inpaint"):
        dm.run_experiment(_config(), workdir, "ew", **kw, train_fn=pytest.fail,
                          finished_only=True)


def test_extra_rows_train_every_seed_with_their_overrides(tmp_path):
    rows = dm.parse_rows("ew-film=ew:model.task_film=True; pc-l2=pcgrad-ub:model.task_lora_rank=2"
                         ":model.width=16")
    assert rows == {"ew-film": ("ew", {"model.task_film": True}),
                    "pc-l2": ("pcgrad-ub", {"model.task_lora_rank": 2, "model.width": 16})}
    train = FakeTrainer()
    out = dm.run_experiment(_config(), str(tmp_path / "dm"), "ew", steps=2, seeds=(0, 1),
                            rows=rows, train_fn=train, eval_fn=lambda *a, **k: None)
    cfgs = dict(train.calls)
    assert [n for n in cfgs if n.startswith("mtl_")] == [
        "mtl_ew", "mtl_ew-film", "mtl_ew-film_seed1", "mtl_pc-l2", "mtl_pc-l2_seed1"]
    assert cfgs["mtl_ew-film_seed1"].model.task_film and cfgs["mtl_ew-film_seed1"].seed == 1
    assert not cfgs["mtl_ew"].model.task_film
    assert cfgs["mtl_pc-l2"].weighting.grad_space == "representation"
    assert (cfgs["mtl_pc-l2"].model.task_lora_rank, cfgs["mtl_pc-l2"].model.width) == (2, 16)
    assert [r.method for r in out["A"]] == ["single-task", "ew", "ew-film", "pc-l2"]
    for bad, match in (("film=ew:model.task_flim=True", "no key 'model.task_flim'"),
                       ("film=ew:model.width=wide", "width"),
                       ("ew=ew:model.task_film=True", "already a row"),
                       ("film=nope", "nope")):
        with pytest.raises(ValueError, match=match):
            dm.run_experiment(_config(), str(tmp_path / "bad"), "ew", rows=dm.parse_rows(bad),
                              train_fn=pytest.fail, eval_fn=pytest.fail)
    for bad in ("=ew", "film", "film=ew:width", "a=ew;a=ew"):
        with pytest.raises(ValueError, match="--rows"):
            dm.parse_rows(bad)


def test_a_row_with_another_task_mixture_is_compared_under_budget_a_only(tmp_path):
    """Budget B's specialists take the config's mixture shares of the steps: a row that
    changes the mixture has none of its own there, so it is left out of B (and said so)."""
    rows = dm.parse_rows("mix=ew:tasks.denoise.weight=3.0; film=ew:model.task_film=True")
    workdir = str(tmp_path / "dm")
    out = dm.run_experiment(_config(), workdir, "ew", steps=4, budgets=("A", "B"), rows=rows,
                            train_fn=FakeTrainer(), eval_fn=lambda *a, **k: None)
    assert [r.method for r in out["A"]] == ["single-task", "ew", "mix", "film"]
    assert [r.method for r in out["B"]] == ["single-task", "ew", "film"]
    text = open(os.path.join(workdir, "delta_m_B.md")).read()
    assert "Not in this table: mix (another task mixture" in text
    assert "Not in this table" not in open(os.path.join(workdir, "delta_m.md")).read()


def test_learning_curves_count_each_tasks_images_and_average_seeds(tmp_path):
    runs = []
    for seed, (a, b) in enumerate(((20.0, 22.0), (21.0, 25.0))):
        w = tmp_path / f"run{seed}"
        w.mkdir()
        base = {"eval/denoise/psnr_baseline": 10.0}
        rows = [{"step": 10, "loss": 1.0}, {"step": 100, "eval/denoise/psnr": a, **base},
                {"step": 200, "eval/denoise/psnr": 0.0, **base},  # during training, 1 batch
                {"step": 200, "eval/denoise/psnr": b + 1, "eval/denoise/ssim": 0.5,  # final
                 "eval/denoise/psnr_baseline": 11.0}]  # on other crops: the gain is b - 10
        if seed == 1:
            rows.append({"step": 300, "eval/denoise/psnr": 30.0, **base})  # one run only
        (w / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(str(w))
    assert dm_plots.eval_points(runs[0], "denoise") == [(100, 10.0), (200, 12.0)]
    assert dm_plots.eval_points(runs[0], "inpaint") == []
    # A multi-task model with the task at 1/7 of a batch of 32: 32/7 images per step.
    assert dm_plots.mean_curve(runs, "denoise", 32 / 7) == [
        (pytest.approx(100 * 32 / 7), 10.5), (pytest.approx(200 * 32 / 7), 13.5)]
    # The final evaluation (other crops) left out of a curve:
    assert dm_plots.mean_curve(runs, "denoise", 1.0, before=200) == [(100.0, 10.5)]


def test_tradeoff_axis_is_relative_to_ew_where_the_table_has_it_else_milliseconds():
    ref = dm.Row("single-task", {}, 0.0, 800.0)
    famo = dm.Row("famo", {}, -5.0, 226.0)
    lora = dm.Row("famo-lora16", {}, -3.5, 532.0)
    # No `ew` row (--strategies famo): no relative times, so the step time in ms (the
    # picture was empty before).
    label, x = dm_plots.step_axis({"A": [ref, famo, lora]}, reference="single-task", base="ew")
    assert label == "train-step time (ms)" and [x(famo), x(lora)] == [226.0, 532.0]
    ew = dm.Row("ew", {}, -6.0, 200.0, time_vs_base=1.0)
    famo_rel = dm.Row("famo", {}, -5.0, 226.0, time_vs_base=1.13)
    label, x = dm_plots.step_axis({"A": [ref, ew, famo_rel], "B": [ref, ew, famo_rel]},
                                  reference="single-task", base="ew")
    assert label == "train-step time / ew" and x(famo_rel) == 1.13


def test_orchestration_evaluates_a_run_that_lacks_its_final_eval(tmp_path):
    workdir = str(tmp_path / "dm")
    cfg = dm.multi_task_config(_config(), "ew", 3)
    FakeTrainer()(cfg, os.path.join(workdir, "mtl_ew"), write_eval=False)
    evaluated = []

    def fake_eval(path, *, step):
        evaluated.append((os.path.basename(path), step))
        with open(os.path.join(path, "metrics.jsonl"), "a") as f:
            f.write(json.dumps({"step": step, **_fake_metrics(cfg)}) + "\n")

    train = FakeTrainer()
    dm.run_experiment(_config(), workdir, "ew", steps=3, train_fn=train, eval_fn=fake_eval)
    assert evaluated == [("mtl_ew", 3)]
    assert [n for n, _ in train.calls] == ["single_denoise", "single_inpaint"]


def test_orchestration_reports_a_run_that_stopped_early(tmp_path):
    def stops_early(cfg, workdir):
        os.makedirs(workdir, exist_ok=True)

    with pytest.raises(RuntimeError, match="no checkpoint at step 3 after training"):
        dm.run_experiment(_config(), str(tmp_path), "ew", steps=3, train_fn=stops_early,
                          eval_fn=stops_early)


@pytest.mark.parametrize("strategies, message", [
    ("ew,bogus", "unknown weighting strategy 'bogus'; known: "),
    ("ew,famo", "config.weighting.c is a hyperparameter of none of ew, famo"),
    (" , ", "--strategies is empty"),
    ("ew,famo-ub", "'famo-ub': '-ub' .*gradient methods only"),
])
def test_bad_strategies_refused_before_training(tmp_path, strategies, message):
    def never(*args, **kwargs):
        pytest.fail("trained despite a bad strategy list")

    with pytest.raises(ValueError, match=message):
        dm.run_experiment(_config(0.25), str(tmp_path / "dm"), strategies, train_fn=never,
                          eval_fn=never)
    assert not os.path.exists(tmp_path / "dm")


def test_cli_refuses_unknown_strategy_before_training(tmp_path):
    workdir = tmp_path / "dm"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "mtlgen_jax.experiments.delta_m",
         "--config", "configs/default.py:tiny", "--workdir", str(workdir),
         "--strategies", "ew,bogus", "--config.dataset.data_dir", str(tmp_path / "tfds")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unknown weighting strategy 'bogus'; known: " in proc.stderr
    assert not workdir.exists()


# --- the toy --------------------------------------------------------------------------
def test_toy_objectives_respect_their_lower_bounds():
    axis = np.linspace(-10, 10, 201, dtype=np.float32)
    grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
    for scale in (1.0, 0.1):
        f = np.asarray(toy.objectives(grid, scale))
        assert np.all(f > toy.lower_bounds(scale))
        # The bowls' minima: f1 near (7, -8), f2 near (-7, -8), about -20 * (scale, 1).
        assert np.allclose(f.min(0), [-20 * scale, -20], rtol=2e-3)


def test_toy_pareto_set_is_the_lower_compromise_curve():
    pareto = toy.pareto_set(0.1, resolution=401)
    assert pareto[:, 0].min() == pytest.approx(-7.0, abs=0.06)
    assert pareto[:, 0].max() == pytest.approx(7.0, abs=0.06)
    assert np.all((pareto[:, 1] > -8.6) & (pareto[:, 1] < -8.0))


def test_toy_ew_converges_to_the_closed_form_minimiser_of_the_sum():
    # Below x2 = 0 the loss is c2(x2) (q1 scale + q2): its x1-minimiser is
    # 7 (scale - 1) / (scale + 1) whatever x2.
    trajs = toy.trajectories("ew", [(0.0, -1.0), (-7.5, -0.5)], steps=1500, lr=0.02)
    assert trajs.shape == (2, 1501, 2)
    np.testing.assert_allclose(trajs[:, -1, 0], 7 * (0.1 - 1) / 1.1, atol=0.05)
    compiled = toy._trajectories._cache_size()
    toy.trajectories("ew", [(1.0, -2.0), (3.0, -1.0)], steps=1500, lr=0.02)
    assert toy._trajectories._cache_size() == compiled  # one jitted scan per setting


@pytest.mark.parametrize("name", ["mgda", "cagrad"])
def test_toy_mgda_and_cagrad_end_on_the_pareto_set(name):
    starts = [(0.0, 0.0), (-7.5, -0.5), (9.0, -1.0)]  # CAGrad's starts in the lower half
    trajs = toy.trajectories(name, starts, steps=3000, lr=0.5, optimizer="sgd")
    pareto = toy.pareto_set(0.1, resolution=401)
    start_dist = toy.distance_to_set(np.asarray(starts), pareto)
    end_dist = toy.distance_to_set(trajs[:, -1], pareto)
    assert np.all(start_dist > 5.0)
    assert np.all(end_dist < 0.15), end_dist
    if name == "cagrad":  # c < 1: converges to the minimiser of the average loss
        np.testing.assert_allclose(trajs[:, -1, 0], 7 * (0.1 - 1) / 1.1, atol=0.05)
    else:  # MGDA stops at the first Pareto-stationary point: different ones here
        assert np.ptp(trajs[:, -1, 0]) > 2.0


def test_toy_figure_and_cli(tmp_path):
    out = str(tmp_path / "toy.png")
    seconds = toy.make_figure(out, ["ew", "pcgrad"], steps=20)
    assert set(seconds) == {"ew", "pcgrad"}
    from PIL import Image

    w, h = Image.open(out).size
    assert w >= 2 * 280 and h >= 280
    with pytest.raises(SystemExit):  # argparse's error exit, before anything runs
        toy.main(["--out", str(tmp_path / "bad.png"), "--strategies", "ew,bogus"])
    assert not os.path.exists(tmp_path / "bad.png")
    assert math.isfinite(seconds["ew"])


def test_objectives_experiment_configs_and_table():
    from mtlgen_jax.experiments import objectives as objx

    base = default.get_config("tiny")
    cfg = objx.objective_config(base, "diffusion-residual")
    for task in ("denoise", "inpaint", "super_resolve", "colorize"):
        assert cfg.tasks[task].objective == "diffusion" and cfg.tasks[task].residual is True
    assert cfg.tasks.denoise.sigma_max == base.tasks.denoise.sigma_max  # the rest is kept
    assert objx.objective_config(base, "bridge").tasks.inpaint.objective == "bridge"
    # Plain diffusion has no start: its tasks move to l2 and lose the relative floor; the
    # objectives with a start keep both.
    plain = objx.objective_config(base, "diffusion")
    for task, floor_db in default.RELATIVE_FLOORS_DB.items():
        assert base.tasks[task].relative_floor_db == floor_db
        assert plain.tasks[task].loss == "l2" and "relative_floor_db" not in plain.tasks[task]
        assert cfg.tasks[task].relative_floor_db == floor_db
    with pytest.raises(ValueError, match="objective 'ddpm' is unknown"):
        objx.objective_config(base, "ddpm")
    assert objx.steps_for("regression-residual", [1, 4, 25]) == [1]
    assert objx.steps_for("bridge", [1, 4, 25]) == [1, 4, 25]
    ev = {"eval/denoise/psnr": 25.0, "eval/denoise/psnr_baseline": 20.0,
          "eval/denoise/psnr_classical": 26.0, "eval/denoise/sharpness": 0.9}
    table = objx.rows({"bridge": {"4": dict(ev, **{"eval/denoise/psnr": 24.0}), "1": ev}},
                      ["denoise"])
    assert [(r["method"], r["steps"], r["psnr"]) for r in table] == [
        ("bridge", 1, 25.0), ("bridge", 4, 24.0), ("baseline", 0, 20.0),
        ("classical", 0, 26.0)]
    md = objx.format_markdown(table)
    assert "| denoise | bridge | 4 | 24.000 |" in md and "| denoise | classical | – | 26.000" in md


def test_with_objective_drops_what_only_the_old_objective_takes():
    bridge = dict(weight=4.0, objective="bridge", bridge_noise=0.1, endpoint_fraction=0.5,
                  sample_steps=1, loss="relative", relative_floor_db=30.0)
    # The bridge's 1-step fidelity point is not a DDIM step count: dropped (configs/digits.py
    # ran super-resolution's DDIM at 1 step before this), unless given; the relative loss's
    # floor goes with the relative loss.
    assert default.with_objective(bridge, "diffusion", loss="l2") == dict(
        weight=4.0, objective="diffusion", loss="l2")
    assert default.with_objective(bridge, "diffusion")["relative_floor_db"] == 30.0
    assert default.with_objective(bridge, "diffusion", sample_steps=25)["sample_steps"] == 25
    for name in ("configs.digits", "configs.cifar10"):
        cfg = importlib.import_module(name).get_config()
        assert not any(dict(cfg.tasks[t]).get("sample_steps") for t in cfg.tasks.names.split(",")
                       if cfg.tasks[t].objective == "diffusion"), name
    assert default.with_objective(bridge, "regression") == dict(
        weight=4.0, objective="regression", loss="relative", relative_floor_db=30.0)
    assert default.with_objective(bridge, "bridge", bridge_noise=0.2) == dict(
        bridge, bridge_noise=0.2)


def test_configs_measured_before_the_floors_keep_the_unfloored_relative_loss():
    """The default floors each relative-loss task's start error; configs/photos.py and
    configs/delta_m.py keep the loss their published tables were measured with (unless
    `delta_m.py:floors`), and a floor can still be set on them (the field keeps its type)."""
    photos = importlib.import_module("configs.photos")
    delta = importlib.import_module("configs.delta_m")
    floors = default.RELATIVE_FLOORS_DB

    def of(cfg):
        return {t: cfg.tasks[t].relative_floor_db for t in floors}

    assert of(default.get_config()) == floors and of(delta.get_config("floors")) == floors
    for cfg in (photos.get_config(), delta.get_config(), delta.get_config("tiny")):
        assert set(of(cfg).values()) == {None}
        cfg.tasks.colorize.relative_floor_db = 25
        assert cfg.tasks.colorize.relative_floor_db == 25.0
