"""One Tune trial: a driver function that builds and fits a Ray Train ``TorchTrainer``.

Ray 2.60 (Train V2) no longer accepts a Trainer in ``Tuner``; a trial is a function
that runs Train, and ``TuneReportCallback`` forwards rank 0's reports (evaluation
metrics are already all-gathered by the loop) to Tune, with ``checkpoint_path`` added.
The trial's Train run is named after the trial id and stored under the sweep folder,
so a trial that a restored sweep restarts resumes its Train run from its last
checkpoint instead of from step 0.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

from ray.tune.integration.ray_train import TuneReportCallback

from ecomtl.config.schema import ExperimentConfig
from ecomtl.data.prepare import PreparedData
from ecomtl.data.sampling import sampler_from_config
from ecomtl.tune.space import apply_params

SINGLE_TASK = "single_task"  # the param naming the head of a single-task run
TIMINGS_FILE = "trial_timings.jsonl"
RUNS_DIR = "train_runs"


class TimedTuneReportCallback(TuneReportCallback):
    """Adds the wall time of each report, so that start-up and tear-down around the
    training steps (the per-trial overhead) can be measured from the trial table."""

    def after_report(self, run_context, metrics, checkpoint):
        metrics = [dict(metrics[0], reported_at=time.time())] + list(metrics[1:])
        super().after_report(run_context, metrics, checkpoint)


def source_steps(cfg: ExperimentConfig, sizes: dict[str, int]) -> dict[str, int]:
    """Optimizer steps' worth of batches each source got in the multi-task run, counted
    from the sampler's actual draws (a pure function of the seed): every head of a source
    trains on each batch drawn from it."""
    sampler = sampler_from_config(cfg, sizes)
    micro = cfg.training.steps * cfg.training.grad_accum
    k = cfg.sampling.per_step(len(sizes))
    drawn = Counter(s for i in range(micro) for s in sampler.sources_at(i, k))
    return {s: round(drawn[s] / cfg.training.grad_accum) for s in sizes}


def single_task_config(cfg: ExperimentConfig, task: str, sizes: dict[str, int]) -> ExperimentConfig:
    """``task`` alone, on its source only, for the steps its source got in ``cfg``
    (equal compute per head), evaluated as often relative to its own length."""
    source = cfg.tasks[task].source
    steps = max(1, source_steps(cfg, sizes)[source])
    frac = steps / cfg.training.steps
    data = cfg.model_dump(mode="json")
    data["name"] = f"{cfg.name}-single-{task}"
    # alone, the task is the whole aggregate (a score_weight of 0 would leave nothing to select on)
    data["tasks"] = {task: data["tasks"][task] | {"weight": 1.0, "score_weight": 1.0}}
    data["sources"] = {source: data["sources"][source]}
    data["sampling"] |= {"weights": None}
    data["training"] |= {"steps": steps, "eval_every": max(1, min(steps, round(cfg.training.eval_every * frac)))}
    data["tune"] = None
    return ExperimentConfig.model_validate(data)


def source_subset(data: PreparedData, source: str, tasks: list[str]) -> PreparedData:
    """The prepared data of one source (the loop samples every source it is given) with
    the labels of ``tasks`` only (a batch carries a label for every task it holds)."""
    def keep(split):
        return replace(split, labels={t: split.labels[t] for t in tasks})

    return replace(data, label_infos={t: data.label_infos[t] for t in tasks},
                   max_lengths={source: data.max_lengths[source]},
                   splits={split: {source: keep(by_src[source])} for split, by_src in data.splits.items()})


def _log_timing(sweep_dir: str, trial_id: str, event: str) -> None:
    if "://" in sweep_dir:
        return  # remote storage: no shared file to append to
    # One short line per write with O_APPEND: concurrent trials do not interleave.
    with open(os.path.join(sweep_dir, TIMINGS_FILE), "a") as f:
        f.write(json.dumps({"trial_id": trial_id, "event": event, "t": time.time()}) + "\n")


def run_trial(params: dict, *, base: dict, refs: dict[str, Any], sizes: dict[str, int], sweep_dir: str) -> None:
    """The Tune trainable (bound with ``tune.with_parameters``). ``refs`` holds object
    refs (inside a dict, so Tune does not resolve them): the data prepared once by the
    sweep driver, shared by every trial."""
    import ray.tune

    from ecomtl.train.trainer import build_trainer

    trial_id = ray.tune.get_context().get_trial_id()
    _log_timing(sweep_dir, trial_id, "start")
    cfg = ExperimentConfig.model_validate(base)
    task: Optional[str] = params.get(SINGLE_TASK)
    if task:
        cfg = single_task_config(cfg, task, sizes)
        data_ref = refs["single"][task]
    else:
        cfg = apply_params(cfg, params)
        data_ref = refs["mtl"]
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(
        update={"storage_path": f"{sweep_dir}/{RUNS_DIR}", "bundle_dir": None})})
    pbt = (base.get("tune") or {}).get("pbt")
    try:
        if pbt and not task:
            from ecomtl.tune.pbt import PbtConfig, run_segments

            run_segments(cfg, data_ref, trial_id, sweep_dir, PbtConfig.model_validate(pbt))
            return
        result = build_trainer(cfg, data_ref, run_name=trial_id, callbacks=[TimedTuneReportCallback()]).fit()
    finally:
        _log_timing(sweep_dir, trial_id, "end")
    if result.error:
        raise result.error


def read_timings(sweep_dir: str) -> dict[str, dict[str, list[float]]]:
    """trial id → {"start": [...], "end": [...]} (a restarted trial has several starts)."""
    path = Path(sweep_dir, TIMINGS_FILE)
    out: dict[str, dict[str, list[float]]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["trial_id"], {"start": [], "end": []})[rec["event"]].append(rec["t"])
    return out
