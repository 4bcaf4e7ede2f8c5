"""Real sweeps on a local Ray with the tiny model: Tune + Optuna + ASHA, each trial a
Ray Train run. About a minute each."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from ecomtl.config.load import load_config
from ecomtl.evaluation import AGGREGATE, evaluate_bundle
from ecomtl.model.bundle import check_bundle
from ecomtl.tune.pareto import dominates
from ecomtl.tune.report import FULL
from ecomtl.tune.space import load_sweep_config
from ecomtl.tune.sweep import run_sweep
from ecomtl.tune.trial import read_timings

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
TINY_SWEEP = REPO / "jobs" / "configs" / "tiny_sweep.yaml"
GOOD_LR, BAD_LR = 3e-3, 1e-7


def sweep_cfg(tmp_path, data_root, *overrides):
    return load_sweep_config(TINY_SWEEP, [f"output.storage_path={tmp_path}", f"data_root={data_root}", *overrides])


def test_sweep_asha_stops_the_bad_region_and_exports_the_best(ray_local, tmp_path, data_root):
    # The config as written (trial 0) learns; the other region of the space cannot (lr 1e-7):
    # ASHA must stop such trials at its rung (step 12 of 24) instead of training them out.
    cfg, section = sweep_cfg(
        tmp_path, data_root, "training.steps=24", "training.eval_every=6", f"optim.lr={GOOD_LR}",
        "tune.num_samples=4", "tune.max_concurrent=1", "tune.asha={grace_steps: 12, reduction_factor: 2}",
        f"tune.space={{optim.lr: {{dist: choice, values: [{GOOD_LR}, {BAD_LR}]}}}}")
    printed = []
    out = run_sweep(cfg, section, log=printed.append)

    table = pd.read_csv(out.files["table"])
    assert len(table) == 4 and set(table["kind"]) == {"default", "mtl"}
    default = table[table["kind"] == "default"].iloc[0]
    assert default["status"] == "completed" and default["steps_done"] == 24
    bad = table[table["optim.lr"] == BAD_LR]
    assert len(bad) >= 1, "the seeded TPE drew no trial from the bad region"
    assert (bad["status"] == "stopped early").all() and (bad["steps_done"] == 12).all(), table
    assert (table[AGGREGATE].notna()).all() and {f"{t}/score" for t in cfg.tasks} <= set(table.columns)
    # per-trial time outside training, from the trials' own timestamps
    assert (table["startup_s"] > 0).all() and (default["teardown_s"] >= 0)
    assert (table["train_s"] < table["trial_wall_s"]).all()

    summary = "\n".join(printed)
    assert f"best trial {out.best['trial_id']}" in summary and "stopped early" in summary
    # the best bundle is chosen on the whole validation split among the finalists: the top
    # trial by the sampled aggregate, other completed ones, and the default config
    finalists = table[table[FULL].notna()].set_index("trial_id")
    assert table.loc[table[AGGREGATE].idxmax(), "trial_id"] in finalists.index
    assert default["trial_id"] in finalists.index and (finalists["status"] == "completed").all()
    assert out.best["trial_id"] == finalists[FULL].idxmax()
    assert json.loads(Path(out.files["bundle"], "metrics.json").read_text())[AGGREGATE] == pytest.approx(
        finalists[FULL].max())
    # the best config is a config `ecomtl train` accepts, with the winning values in it
    best_cfg = load_config(out.files["config"])
    assert best_cfg.optim.lr == pytest.approx(out.best["optim.lr"]) and best_cfg.tune is None
    # the best bundle loads and evaluates
    check_bundle(out.files["bundle"])
    scored = evaluate_bundle(str(out.files["bundle"]), data_root=data_root, split="validation", max_rows=32)
    assert set(scored["tasks"]) == set(cfg.tasks) and scored["tasks"]["rating"]["n"] == 32
    assert json.loads(Path(out.files["bundle"], "metrics.json").read_text())["sweep"] == cfg.name
    assert out.files["aggregate_plot"].stat().st_size > 0


@pytest.mark.slow  # ~3 min: 3 trials + 4 single-task runs; run with -m slow
def test_pareto_mode_and_single_task_runs_at_equal_compute(ray_local, tmp_path, data_root):
    """Multi-objective mode returns only the non-dominated trials; ``single_task`` then
    trains each head alone for the steps its source got and adds per-head deltas."""
    cfg, section = sweep_cfg(tmp_path, data_root, "training.steps=6", "training.eval_every=3", "tune.mode=multi",
                             "tune.asha=null", "tune.num_samples=3", "tune.max_concurrent=2", "tune.single_task=true",
                             "tune.final_eval=false")  # the full-split choice is tested above
    out = run_sweep(cfg, section, log=lambda *_: None)

    full = pd.read_csv(out.files["table"])
    single = full[full["kind"] == "single"]
    table = full[full["kind"] != "single"]
    metrics = [f"{t}/score" for t in cfg.tasks]
    compared = table[table["pareto"].notna()]
    assert len(compared) == 3
    points = {r["trial_id"]: [r[m] for m in metrics] for _, r in compared.iterrows()}
    for _, r in compared.iterrows():
        dominated = any(dominates(p, points[r["trial_id"]], ["max"] * len(metrics))
                        for tid, p in points.items() if tid != r["trial_id"])
        assert bool(r["pareto"]) == (not dominated), (r["trial_id"], points)
    assert {r["trial_id"] for r in out.front} == set(compared[compared["pareto"].astype(bool)]["trial_id"])
    assert out.files["pareto_plot"].stat().st_size > 0

    assert sorted(single["single_task"]) == sorted(cfg.tasks)
    assert (single["status"] == "completed").all(), single
    # each head alone for the steps its source got (round robin over 3 sources: 2 of 6)
    assert (single["steps_done"] == 2).all()
    for _, row in table.iterrows():  # every trial ran its whole budget (no ASHA)
        for t in cfg.tasks:
            alone = single[single["single_task"] == t].iloc[0]
            assert row[f"{t}/delta_vs_single"] == pytest.approx(row[f"{t}/score"] - alone[f"{t}/score"])
    assert out.files["single_task_plot"].stat().st_size > 0


@pytest.mark.slow  # 2m20s: two sweeps in fresh Ray instances; run with -m slow
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(tmp_path, data_root):
    """The driver is killed (SIGKILL, with the local Ray it started) while the second of
    two trials trains; running the same command again finishes the sweep."""
    sweep_dir = tmp_path / "tiny_sweep"
    cmd = [sys.executable, str(REPO / "jobs" / "tune.py"), str(TINY_SWEEP), f"output.storage_path={tmp_path}",
           f"data_root={data_root}", "training.steps=12", "training.eval_every=3", "tune.asha=null",
           "tune.num_samples=2", "tune.max_concurrent=1", "tune.final_eval=false"]
    # a fresh local Ray of its own (never a cluster someone else started), package from this checkout
    env = dict(os.environ, RAY_ADDRESS="local", PYTHONPATH=str(REPO / "platform"))
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and first.poll() is None:
            timings = read_timings(str(sweep_dir))
            done = [t for t, v in timings.items() if v["end"]]
            running = [t for t, v in timings.items() if v["start"] and not v["end"]]
            if done and running and _reported(sweep_dir / "train_runs" / running[0]):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"sweep ended or hung before the interruption point (rc {first.poll()})")
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    finished, interrupted = done[0], running[0]

    rc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300).returncode
    assert rc == 0
    timings = read_timings(str(sweep_dir))
    assert len(timings) == 2
    assert len(timings[finished]["start"]) == 1, "a finished trial ran again"
    assert len(timings[interrupted]["start"]) == 2
    table = pd.read_csv(sweep_dir / "trials.csv")
    assert len(table) == 2 and (table["status"] == "completed").all(), table
    # the interrupted trial's Train run continued from its checkpoint, not from step 0
    progress = pd.read_csv(sweep_dir / interrupted / "progress.csv")
    after = progress[progress["reported_at"] > timings[interrupted]["start"][-1]]
    assert len(after) and after["step"].min() > 3 and after["step"].max() == 12, progress[["step", "reported_at"]]


def _reported(run_dir: Path) -> bool:
    return any(run_dir.glob("step_*/trainer_state.json"))
