"""What a sweep leaves behind: the trial table (CSV and printed), the best config as a
YAML that ``ecomtl train`` accepts, the best bundle, the Pareto front and the plots.

One row per trial, taken at the trial's best evaluation by the aggregate: the
checkpoint that would be exported, which Train keeps (it ranks checkpoints by the
aggregate), while later ones may have been deleted.
"""

from __future__ import annotations

import math
import statistics
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from ecomtl.config.load import dump_config
from ecomtl.config.schema import ExperimentConfig
from ecomtl.evaluation import AGGREGATE, evaluate_bundle, selected_tasks
from ecomtl.tune.pareto import pareto_front, tradeoffs
from ecomtl.tune.space import SIMPLEX_PREFIX, WEIGHTS, TuneSection, apply_params, default_point, param_space
from ecomtl.tune.trial import SINGLE_TASK, read_timings, single_task_config

CHECKPOINT = "checkpoint_path"
FILES = {"table": "trials.csv", "config": "best_config.yaml", "bundle": "best_bundle",
         "aggregate_plot": "aggregate_by_trial.png", "pareto_plot": "pareto_front.png",
         "single_task_plot": "multi_vs_single.png"}


def _num(v) -> Optional[float]:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _params(result_config: dict) -> dict:
    """The sampled values, without what Tune or with_parameters add."""
    return {k: v for k, v in result_config.items() if "." in k or k == SINGLE_TASK}


def trial_config(cfg: ExperimentConfig, row: dict) -> ExperimentConfig:
    return apply_params(cfg, row["params"])


def trial_rows(grid, cfg: ExperimentConfig, section: TuneSection, sweep_dir: str, kind: str,
               sizes: Optional[dict] = None) -> list[dict]:
    timings = read_timings(sweep_dir)
    default = default_point(cfg, param_space(cfg, section)) if section.include_default and kind == "mtl" else None
    rows = []
    for result in grid:
        trial_id = Path(result.path).name
        params = _params(result.config or {})
        run_cfg = single_task_config(cfg, params[SINGLE_TASK], sizes) if kind == "single" else apply_params(cfg, params)
        row: dict = {"trial_id": trial_id, "kind": kind, "params": params, "error": None,
                     **{f"w/{t}": task.weight for t, task in run_cfg.tasks.items()},
                     **{k: v for k, v in params.items() if not k.startswith(SIMPLEX_PREFIX) and not k.endswith(".weight")}}
        if default is not None and all(params.get(k) == v for k, v in default.items()):
            row["kind"] = "default"
        df = result.metrics_dataframe
        if result.error is not None:
            row["error"] = f"{type(result.error).__name__}: {str(result.error).splitlines()[0][:200]}"
        if df is None or AGGREGATE not in df or df[AGGREGATE].isna().all():
            rows.append(row | {"status": "error" if row["error"] else "no report", AGGREGATE: None})
            continue
        df = df[df[AGGREGATE].notna()].reset_index(drop=True)
        best = df.loc[df[AGGREGATE].idxmax()]
        last_step = int(df["step"].max())
        row["status"] = "error" if row["error"] else ("completed" if last_step >= run_cfg.training.steps
                                                       else "stopped early")
        row |= {"steps_done": last_step, "steps": run_cfg.training.steps, "best_step": int(best["step"]),
                "reports": len(df), AGGREGATE: float(best[AGGREGATE]), CHECKPOINT: best.get(CHECKPOINT)}
        row |= {f"{t}/score": _num(best.get(f"{t}/score")) for t in run_cfg.tasks}
        row |= _overhead(timings.get(trial_id), df)
        rows.append(row)
    # the default first, then in the order the trials started (a restored grid lists them in another order)
    return sorted(rows, key=lambda r: (r.get("kind") != "default", r.get("started_at") or float("inf")))


def _overhead(timing: Optional[dict], df) -> dict:
    """Where a trial's wall time went, from the trial driver's start/end marks and the
    loop's ``timing/`` marks in each report (all wall clock, seconds):

    - ``startup_s``: driver start → first training step (Train worker group, process
      group, model load, DeepSpeed init);
    - ``eval_s`` / ``report_s``: periodic evaluation / checkpoint write + persist +
      hand-off to Tune, summed over the trial's reports;
    - ``teardown_s``: last report → the driver's ``fit()`` returning (absent for a trial
      that ASHA stopped: Tune ends it at once);
    - ``train_s``: the training steps themselves; ``overhead_s`` = wall − train.
    """
    cols = ("reported_at", "timing/loop_start", "timing/train_s", "timing/eval_s", "timing/report_start")
    if not timing or not timing["start"] or any(c not in df for c in cols):
        return {}
    start = timing["start"][-1]  # a restored trial: its last start
    df = df[df["reported_at"] >= start]
    if df.empty:
        return {}
    end = timing["end"][-1] if timing["end"] and timing["end"][-1] > start else None
    last = float(df["reported_at"].max())
    wall = (end or last) - start
    train = float(df["timing/train_s"].max())
    out = {"started_at": start, "ended_at": end or last, "trial_wall_s": wall, "train_s": train,
           "startup_s": float(df["timing/loop_start"].min()) - start,
           "eval_s": float(df["timing/eval_s"].sum()),
           "report_s": float((df["reported_at"] - df["timing/report_start"]).sum()),
           "overhead_s": wall - train}
    if end is not None:
        out["teardown_s"] = end - last
    return out


def scheduling_gaps(rows: list[dict]) -> list[float]:
    """Seconds from one trial's end to the next one's start while no trial ran (Tune
    tearing the last one down, then scheduling and starting the next trial's actor)."""
    spans = sorted((r["started_at"], r["ended_at"]) for r in rows if r.get("started_at") is not None)
    gaps = []
    for i in range(1, len(spans)):
        busy_until = max(end for _, end in spans[:i])
        if spans[i][0] > busy_until:
            gaps.append(spans[i][0] - busy_until)
    return gaps


def best_row(rows: list[dict]) -> dict:
    ok = [r for r in rows if r.get(AGGREGATE) is not None and r["status"] != "error"]
    if not ok:
        raise RuntimeError("no trial finished with metrics")
    return max(ok, key=lambda r: r[AGGREGATE])


def mark_pareto(rows: list[dict], tasks: list[str]) -> list[dict]:
    """Flags ``pareto`` on the trials compared: those that ran their full budget (a
    trial ASHA stopped is not a trade-off, it is unfinished); all scored ones if none did."""
    scored = [r for r in rows if r.get(AGGREGATE) is not None and r["status"] != "error"]
    eligible = [r for r in scored if r["status"] == "completed"] or scored
    metrics = [f"{t}/score" for t in tasks]
    front = set(pareto_front([[r[m] for m in metrics] for r in eligible], ["max"] * len(metrics)))
    for i, r in enumerate(eligible):
        r["pareto"] = i in front
    return [r for i, r in enumerate(eligible) if i in front]


def add_single_task_deltas(rows: list[dict], single_rows: list[dict]) -> None:
    """Multi-task minus single-task score, per head: > 0 means sharing helped it. Only
    for trials that ran their whole budget: the single-task runs match that compute."""
    single = {r["params"][SINGLE_TASK]: r for r in single_rows if r.get(AGGREGATE) is not None}
    for r in rows:
        if r.get("status") != "completed":
            continue
        for t, s in single.items():
            if r.get(f"{t}/score") is not None:
                r[f"{t}/delta_vs_single"] = r[f"{t}/score"] - s[f"{t}/score"]


FULL = "full_validation_" + AGGREGATE


@contextmanager
def _checkpoint_bundle(path: str):
    """The bundle inside a trial's checkpoint, as a local directory."""
    from ray.train import Checkpoint

    from ecomtl.train.loop import BUNDLE_DIR

    with Checkpoint(path).as_directory() as d:
        yield Path(d, BUNDLE_DIR)


def finalists(rows: list[dict], top: int) -> list[dict]:
    """The trials scored on the whole validation split: the best by the sampled aggregate,
    the next ones of those that ran their whole budget (up to ``top`` in all), and the
    default config. A 300-row sample picks among close trials by noise; the full split
    decides between them."""
    best = best_row(rows)
    completed = sorted((r for r in rows if r["status"] == "completed" and r.get(AGGREGATE) is not None),
                       key=lambda r: -r[AGGREGATE])
    picked = [best] + [r for r in completed if r is not best][: top - 1]
    picked += [r for r in rows if r["kind"] == "default" and r not in picked]
    return [r for r in picked if r.get(CHECKPOINT)]


def write_report(cfg: ExperimentConfig, section: TuneSection, name: str, sweep_dir: str, rows: list[dict],
                 single_rows: list[dict], log=print):
    import pandas as pd

    from ecomtl.model.bundle import copy_bundle
    from ecomtl.tune.plots import plot_aggregate, plot_multi_vs_single, plot_pareto
    from ecomtl.tune.sweep import SweepOutcome

    tasks = list(cfg.tasks)
    add_single_task_deltas(rows, single_rows)
    front = mark_pareto(rows, selected_tasks(cfg)) if section.mode == "multi" else []
    best = best_row(rows)
    default = next((r for r in rows if r["kind"] == "default"), None)
    out = Path(sweep_dir)
    files = {k: out / v for k, v in FILES.items()}
    full: dict[str, dict] = {}
    if section.final_eval:
        root = cfg.resolved_data_root()
        for r in finalists(rows, section.final_eval_top):
            with _checkpoint_bundle(r[CHECKPOINT]) as bundle:
                full[r["trial_id"]] = evaluate_bundle(str(bundle), data_root=root, split="validation")
            r[FULL] = full[r["trial_id"]][AGGREGATE]
        best = max((r for r in rows if FULL in r), key=lambda r: r[FULL], default=best)
    chosen_by = f"{FULL} {best[FULL]:.4f}" if FULL in best else f"{AGGREGATE} {best[AGGREGATE]:.4f}"
    best_cfg = trial_config(cfg, best)
    best_cfg = best_cfg.model_copy(update={"name": f"{cfg.name}-best"})
    files["config"].write_text(f"# best trial {best['trial_id']} of sweep {name}: {chosen_by} "
                               f"(checkpoint of step {best['best_step']})\n" + dump_config(best_cfg))
    metrics = {"selection": {k: v for k, v in best.items() if k != "params"}, "sweep": name}
    if best["trial_id"] in full:
        scored = full[best["trial_id"]]
        metrics |= {"validation": scored["tasks"], AGGREGATE: scored[AGGREGATE]}
    with _checkpoint_bundle(best[CHECKPOINT]) as bundle:
        copy_bundle(bundle, files["bundle"], metrics=metrics)
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "params"} for r in rows + single_rows])
    table.to_csv(files["table"], index=False)
    plot_aggregate(rows, files["aggregate_plot"], title=f"sweep {name}")
    if front:
        plot_pareto(rows, tasks, files["pareto_plot"], title=f"sweep {name}: Pareto front")
    else:
        files.pop("pareto_plot")
    if single_rows:
        plot_multi_vs_single(rows, single_rows, tasks, files["single_task_plot"],
                             title=f"sweep {name}: multi-task vs single-task at equal compute")
    else:
        files.pop("single_task_plot")
    outcome = SweepOutcome(name, sweep_dir, rows + single_rows, best, default, front, files)
    log(summary(outcome, tasks))
    if section.pbt:
        log(pbt_summary(sweep_dir))
    return outcome


def pbt_summary(sweep_dir: str) -> str:
    """Which member cloned which, when: a PBT trial's last values are the end of a weight
    schedule (best_config.yaml holds them as fixed weights)."""
    from ecomtl.tune.pbt import read_exploits

    moves = read_exploits(sweep_dir)
    lines = [f"PBT: {len(moves)} exploit(s)" + (" (the population never changed hands)" if not moves else ":")]
    lines += [f"  step {m['step']}: {m['trial_id']} <- {m['cloned']} ({AGGREGATE} {m.get(AGGREGATE) or float('nan'):.4f})" for m in moves]
    return "\n".join(lines)


OVERHEAD_KEYS = ("trial_wall_s", "train_s", "startup_s", "eval_s", "report_s", "teardown_s", "overhead_s")


def _fmt_overhead(rows: list[dict]) -> str:
    parts = []
    for key in OVERHEAD_KEYS:
        vals = [r[key] for r in rows if r.get(key) is not None]
        if vals:
            parts.append(f"{key[:-2]} {statistics.median(vals):.1f}")
    n = sum(1 for r in rows if r.get("trial_wall_s") is not None)
    return (f"median over {n} trials (s): " + ", ".join(parts)) if parts else "no timings"


def _g(v):
    """Searched values span decades (a learning rate of 3e-5): 3 significant digits."""
    return f"{v:.3g}" if isinstance(v, float) else v


def summary(o: SweepOutcome, tasks: list[str]) -> str:
    from ecomtl.report import table

    rows = o.rows
    params = sorted({k for r in rows for k in r if "." in k and "/" not in k})
    params += [SINGLE_TASK] if any(SINGLE_TASK in r for r in rows) else []
    weights = [f"w/{t}" for t in tasks]
    head = ["trial", "kind", "status", "step"] + params + weights + [AGGREGATE] + (["pareto"] if o.front else [])
    lines = [table([[r["trial_id"], r["kind"], r["status"], r.get("steps_done", "")]
                    + [_g(r.get(k, "")) for k in params + weights] + [r.get(AGGREGATE) if r.get(AGGREGATE) is not None else ""]
                    + ([r.get("pareto", "")] if o.front else []) for r in rows], head)]
    score_cols = [f"{t}/score" for t in tasks] + [f"{t}/delta_vs_single" for t in tasks
                                                   if any(f"{t}/delta_vs_single" in r for r in rows)]
    lines += ["", "per-task validation scores at each trial's best evaluation"
              + (" (delta_vs_single: multi-task minus single-task at equal compute)" if len(score_cols) > len(tasks) else ""),
              table([[r["trial_id"], r["kind"]] + [r.get(c) if r.get(c) is not None else "" for c in score_cols]
                     for r in rows], ["trial", "kind"] + score_cols)]
    b, d = o.best, o.default
    scored_full = [r for r in rows if FULL in r]
    if scored_full:
        lines += ["", f"whole validation split ({FULL}), the finalists:",
                  table([[r["trial_id"], r["kind"], f"{r[AGGREGATE]:.4f}", f"{r[FULL]:.4f}"]
                         for r in sorted(scored_full, key=lambda r: -r[FULL])],
                        ["trial", "kind", f"sampled {AGGREGATE}", FULL])]
    lines += ["", f"best trial {b['trial_id']}" + (" (the default config)" if b["kind"] == "default" else "")
              + f": {AGGREGATE} {b[AGGREGATE]:.4f} (step {b['best_step']})"
              + (f", full validation {b[FULL]:.4f}" if FULL in b else "")]
    if d is not None and d is not b and d.get(AGGREGATE) is not None:
        lines.append(f"default config (trial {d['trial_id']}): {AGGREGATE} {d[AGGREGATE]:.4f}"
                     + (f", full validation {d[FULL]:.4f}" if FULL in d else "")
                     + f" | best - default {b[AGGREGATE] - d[AGGREGATE]:+.4f}"
                     + (f" (full validation {b[FULL] - d[FULL]:+.4f})" if FULL in b and FULL in d else ""))
    elif d is b:
        lines.append("no searched trial beat the default config "
                     + ("on the whole validation split" if FULL in b else "on the validation sample"))
    if o.front:
        trade = tradeoffs(o.front, [f"{t}/score" for t in tasks])
        lines.append("Pareto front: " + "; ".join(
            f"{tid} best at {', '.join(m.split('/')[0] for m in ms) or '-'}" for tid, ms in trade.items()))
    timed = [r for r in rows if r.get("trial_wall_s") is not None]
    if timed:
        lines += ["", "where each trial's time went (s)",
                  table([[r["trial_id"], r["kind"]] + [f"{r[k]:.1f}" if r.get(k) is not None else "" for k in OVERHEAD_KEYS]
                         for r in timed], ["trial", "kind"] + [k[:-2] for k in OVERHEAD_KEYS]), ""]
    lines.append(f"per-trial time outside the training steps, {_fmt_overhead(rows)}")
    gaps = scheduling_gaps(rows)
    if gaps:
        lines.append(f"between trials (no trial running): median {statistics.median(gaps):.1f} s over {len(gaps)} gaps")
    lines += [f"{k}: {v}" for k, v in o.files.items()]
    return "\n".join(lines)
