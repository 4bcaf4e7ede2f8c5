"""The driver side of ``ecomtl tune`` / ``jobs/tune.py``.

    ecomtl tune jobs/configs/demo_sweep.yaml [key=value ...] [--name NAME]

Prepares the data once and shares it with every trial through the object store; runs
a ``Tuner`` whose trials are Ray Train runs (``tune/trial.py``), searched by Optuna's
seeded TPE (one objective, or every task's score in multi mode) and stopped early by
ASHA on the validation aggregate; optionally runs each head alone at the compute it got
in the best trial; writes the report (``tune/report.py``).

Running the same command again (same ``name`` and ``output.storage_path``) resumes an
interrupted sweep: finished trials are kept, unfinished ones restart from their Train
run's last checkpoint.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ecomtl.config.schema import ExperimentConfig
from ecomtl.evaluation import AGGREGATE
from ecomtl.tune.space import TuneSection, default_point, objectives, param_space
from ecomtl.tune.trial import SINGLE_TASK, run_trial, source_subset

SINGLE_SUFFIX = "-single"


@dataclass
class SweepOutcome:
    name: str
    sweep_dir: str
    rows: list[dict]  # the trial table (multi-task trials, then single-task runs)
    best: dict
    default: Optional[dict]
    front: list[dict]
    files: dict[str, Path] = field(default_factory=dict)
    wall_s: float = 0.0


def trial_resources(cfg: ExperimentConfig, section: TuneSection) -> dict[str, float]:
    """What one trial holds while it runs: its driver plus its Train workers (which Train
    V2 reserves in a placement group of its own, outside the trial's resources)."""
    from ecomtl.train.trainer import resolve_use_gpu

    d = cfg.distributed
    res = {"CPU": section.trial_cpus + d.num_workers * d.cpus_per_worker}
    if resolve_use_gpu(cfg):
        res["GPU"] = float(d.num_workers)
    return res


def max_concurrent(cfg: ExperimentConfig, section: TuneSection) -> int:
    """The configured bound, never more trials than the cluster can run at once: extra
    trials would start their drivers and then wait for workers, holding CPUs idle."""
    import ray

    have = ray.cluster_resources()
    fits = min(math.floor(have.get(k, 0) / v + 1e-9) for k, v in trial_resources(cfg, section).items() if v > 0)
    if fits < 1:
        raise RuntimeError(f"one trial needs {trial_resources(cfg, section)}, the cluster has {have}")
    return fits if section.max_concurrent == "auto" else min(fits, section.max_concurrent)


def _trainable(base: ExperimentConfig, refs: dict, sizes: dict, sweep_dir: str, cpus: float):
    from ray import tune

    fn = tune.with_parameters(run_trial, base=base.model_dump(mode="json"), refs=refs, sizes=sizes,
                              sweep_dir=sweep_dir)
    # Tune refuses an all-zero request; a token of memory keeps a CPU-less driver legal
    # (on 2 cores, a trial's single 2-CPU worker must not wait on its own driver's 0.1 CPU).
    return tune.with_resources(fn, {"cpu": cpus} if cpus > 0 else {"cpu": 0, "memory": 1 << 20})


def _run_config(name: str, storage: str):
    from ray import tune

    # Checkpoints live in each trial's Train run; Tune keeps only its own state.
    return tune.RunConfig(name=name, storage_path=storage, verbose=1)


def _search_tuner(cfg: ExperimentConfig, section: TuneSection, trainable, name: str, storage: str):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    space = param_space(cfg, section)
    if section.pbt:
        return _pbt_tuner(cfg, section, trainable, name, storage, space)
    metrics, modes = objectives(cfg, section)
    single = section.mode == "single"
    import optuna

    search = OptunaSearch(
        metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        sampler=optuna.samplers.TPESampler(seed=section.seed, n_startup_trials=section.startup_trials),
        points_to_evaluate=[default_point(cfg, space)] if section.include_default else None,
    )
    scheduler = FIFOScheduler()
    if section.asha:
        # Multi-objective Optuna still needs one scalar to stop trials on: the aggregate.
        # Rungs strictly below the last step (max_t = steps - 1) and stop_last_trials off:
        # a trial that reaches its last step finishes by itself (its teardown is measured)
        # instead of being killed by the scheduler at the final report.
        scheduler = ASHAScheduler(time_attr="step", metric=AGGREGATE, mode="max",
                                  max_t=max(cfg.training.steps - 1, section.asha.grace_steps),
                                  grace_period=section.asha.grace_steps,
                                  reduction_factor=section.asha.reduction_factor, stop_last_trials=False)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(search, max_concurrent=max_concurrent(cfg, section)),
            scheduler=scheduler,
            num_samples=section.num_samples,
            time_budget_s=section.time_budget_min * 60 if section.time_budget_min else None,
            trial_dirname_creator=lambda t: t.trial_id,  # params would make very long names
        ),
        run_config=_run_config(name, storage),
    )


def _pbt_tuner(cfg: ExperimentConfig, section: TuneSection, trainable, name: str, storage: str, space: dict):
    """PBT samples its population at random from the space (the default config first),
    then exploits and explores on its own: no Optuna, no ASHA."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ecomtl.tune.pbt import scheduler

    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=[default_point(cfg, space)] if section.include_default
                                             else None, random_state=section.seed),
            scheduler=scheduler(section.pbt, space, last_step=cfg.training.steps),
            num_samples=section.num_samples,
            max_concurrent_trials=max_concurrent(cfg, section),
            time_budget_s=section.time_budget_min * 60 if section.time_budget_min else None,
            trial_dirname_creator=lambda t: t.trial_id,
        ),
        run_config=_run_config(name, storage),
    )


def _single_tuner(cfg: ExperimentConfig, section: TuneSection, trainable, name: str, storage: str):
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space={SINGLE_TASK: tune.grid_search(list(cfg.tasks))},
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent(cfg, section),
                                    trial_dirname_creator=lambda t: t.trial_id),
        run_config=_run_config(name, storage),
    )


SWEEP_CONFIG = "sweep_config.yaml"
# may change between a sweep and its resumption (they only add work after the search)
_RESUMABLE_CHANGES = ("single_task", "final_eval", "final_eval_top")


def _check_same_sweep(cfg: ExperimentConfig, sweep_dir: str) -> None:
    """Re-running a sweep's command resumes it; re-running it with a different config
    would silently mix two experiments under one name, so that fails instead."""
    import yaml

    from ecomtl.config.load import ConfigError, dump_config

    def comparable(data: dict) -> dict:
        data = dict(data, tune={k: v for k, v in (data.get("tune") or {}).items() if k not in _RESUMABLE_CHANGES})
        return data

    path = Path(sweep_dir, SWEEP_CONFIG)
    text = dump_config(cfg)
    if path.is_file():
        old, new = comparable(yaml.safe_load(path.read_text())), comparable(yaml.safe_load(text))
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"sweep folder {sweep_dir} holds a sweep with a different config (sections differing: "
                              f"{', '.join(diff)}); resume it unchanged, or pick another --name")
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fit(make_tuner: Callable, trainable, path: str, log):
    """Resume the experiment at ``path`` when there is one, else start it."""
    from ray import tune

    # Tune saves its experiment state every ~10 s by default ("auto"): a driver killed
    # within that window after a trial finished would run the trial again on resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    if tune.Tuner.can_restore(path):
        log(f"[ecomtl] resuming the sweep at {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = make_tuner()
    return tuner.fit()


def run_sweep(cfg: ExperimentConfig, section: TuneSection, name: Optional[str] = None, log=print) -> SweepOutcome:
    import ray

    from ecomtl.data.prepare import prepare_data
    from ecomtl.evaluation import task_specs
    from ecomtl.lifecycle.init_from import init_label_infos, tokenizer_location
    from ecomtl.model.build import load_tokenizer
    from ecomtl.ray_env import init_ray
    from ecomtl.report import data_report_table
    from ecomtl.train.trainer import storage_path
    from ecomtl.tune.report import trial_rows, write_report

    t0 = time.perf_counter()
    name = name or cfg.name
    root = cfg.resolved_data_root()
    # Trials run with the trial folder as working directory: every path must be absolute.
    cfg = cfg.model_copy(update={"data_root": root})
    storage = storage_path(cfg)
    sweep_dir = f"{storage}/{name}"
    if "://" not in sweep_dir:
        _check_same_sweep(cfg, sweep_dir)
    init_ray()
    log(f"[ecomtl] sweep {name}: {section.num_samples} trials, mode {section.mode}, "
        f"{max_concurrent(cfg, section)} at a time, each {trial_resources(cfg, section)}; data from {root}")
    # training.init_from: every trial starts from the bundle, on its label spaces
    data = prepare_data(cfg, load_tokenizer(cfg.model, tokenizer_location(cfg)), root=root,
                        label_infos=init_label_infos(cfg, root))
    task_specs(cfg, data.label_infos)  # a metric the label space cannot give fails here, before any trial
    log(data_report_table(data.report()))
    sizes = {s: len(d) for s, d in data.splits["train"].items()}
    refs = {"mtl": ray.put(data), "single": {}}

    trainable = _trainable(cfg, refs, sizes, sweep_dir, section.trial_cpus)
    grid = _fit(lambda: _search_tuner(cfg, section, trainable, name, storage), trainable, sweep_dir, log)
    rows = trial_rows(grid, cfg, section, sweep_dir, kind="mtl")
    if not any(r["aggregate"] is not None for r in rows):
        raise RuntimeError(f"no trial reported a metric; errors: {[r.get('error') for r in rows]}")

    single_rows: list[dict] = []
    if section.single_task:
        from ecomtl.tune.report import best_row, trial_config

        # equal compute: the single-task runs match the best trial that ran its whole budget
        best_cfg = trial_config(cfg, best_row([r for r in rows if r["status"] == "completed"] or rows))
        refs["single"] = {t: ray.put(source_subset(data, spec.source, [t])) for t, spec in best_cfg.tasks.items()}
        st_trainable = _trainable(best_cfg, refs, sizes, f"{storage}/{name}{SINGLE_SUFFIX}", section.trial_cpus)
        if "://" not in storage:
            Path(storage, name + SINGLE_SUFFIX).mkdir(parents=True, exist_ok=True)
        single_path = f"{storage}/{name}{SINGLE_SUFFIX}"
        st_grid = _fit(lambda: _single_tuner(best_cfg, section, st_trainable, name + SINGLE_SUFFIX, storage),
                       st_trainable, single_path, log)
        single_rows = trial_rows(st_grid, best_cfg, section, single_path, kind="single", sizes=sizes)
    outcome = write_report(cfg, section, name, sweep_dir, rows, single_rows, log=log)
    outcome.wall_s = time.perf_counter() - t0
    return outcome
