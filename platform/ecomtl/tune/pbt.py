"""Population Based Training over the loss weights: Jaderberg et al. 2017, "Population
Based Training of Neural Networks"; Royer et al. (NeurIPS 2023, "Scalarization for
Multi-Task and Multi-Domain Learning at Scale") find PBT-tuned fixed weights match the
costly MTL optimisers.

    tune:
      asha: null                   # PBT is the scheduler
      pbt: {perturbation_interval: 300, quantile_fraction: 0.25, resample_probability: 0.25}
      space:
        weights: {dist: loguniform, low: 0.2, high: 5.0}

Ray's own ``PopulationBasedTraining`` decides; this file only makes our trials PBT-able.
A trial here is a function driving a Ray Train run, whose checkpoints Tune never sees
(``TuneReportCallback`` forwards metrics only). So under PBT a trial trains in segments of
``perturbation_interval`` steps, each its own Train run started from the previous
segment's checkpoint, and after each segment the trial reports to Tune itself, with a
small Tune checkpoint that *points at* the Train checkpoint (no weights copied twice).
When PBT exploits, Tune restarts the trial from the donor's pointer with mutated values:
the next segment resumes the donor's model, optimizer, schedule and weighting state and
trains on with the new weights. Every exploit is logged to ``pbt_exploits.jsonl``.

Only values that can change mid-run may be mutated (the optimizer state is cloned, so a
new ``optim.lr`` would be ignored; a new model field would not fit the weights): the task
weights and the ``sampling`` fields. Where Ray's PBT would go wrong here, it is bent:
explored numbers are clipped back into their domain (Ray multiplies by 0.8/1.2 without
bounds), a ``choice`` is given as a list (Ray would multiply a string), and nothing is
perturbed at a trial's last step. Refused: simplex weights (perturbed raw uniforms leave
(0, 1]) and early stopping (the weak members clone instead).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field
# module level, not imported inside a function: the scheduler subclass is pickled with the
# Tuner (a sweep is resumed from it)
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.search.sample import Categorical, Float, Integer

from ecomtl.evaluation import AGGREGATE

POINTER_FILE = "train_checkpoint.json"
EXPLOITS_FILE = "pbt_exploits.jsonl"
#: search-space keys PBT may mutate mid-run (prefixes; "weights" is every task's weight)
MUTABLE = ("weights", "tasks.", "sampling.")


class PbtConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    perturbation_interval: int = Field(..., ge=1, description="optimizer steps between exploit/explore decisions; "
                                       "a multiple of training.eval_every (a trial reports at its evaluations)")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="the bottom fraction clones the top fraction")
    resample_probability: float = Field(0.25, ge=0, le=1, description="explore: resample from the space instead "
                                        "of perturbing the cloned value by 0.8x/1.2x")
    synch: bool = Field(True, description="perturb when the whole population reached the interval (members "
                        "compared at the same step; Ray's default is asynchronous)")


def check_pbt(pbt: PbtConfig, section, cfg) -> Optional[str]:
    """The reason this PBT section cannot run on ``cfg``, or None."""
    if section.asha:
        return "tune.pbt: PBT is the scheduler; set tune.asha: null"
    if section.mode != "single":
        return "tune.pbt: PBT ranks trials by one number; use mode: single"
    if pbt.perturbation_interval % cfg.training.eval_every:
        return (f"tune.pbt.perturbation_interval ({pbt.perturbation_interval}) must be a multiple of "
                f"training.eval_every ({cfg.training.eval_every}): a trial reports at its evaluations")
    if cfg.training.early_stopping_patience:
        return ("training.early_stopping_patience: under PBT the population's weak members clone the strong "
                "ones instead of stopping; set it to null")
    if pbt.perturbation_interval >= cfg.training.steps:
        return (f"tune.pbt.perturbation_interval ({pbt.perturbation_interval}) must be below training.steps "
                f"({cfg.training.steps}), or nothing is ever perturbed")
    for key, dist in section.space.items():
        if dist.dist == "simplex":
            return ("tune.space.weights: PBT perturbs each value by 0.8x/1.2x, which pushes the simplex's raw "
                    "uniforms past 1 (a weight of 0 or below); use weights: {dist: loguniform, ...} under PBT")
        if not key.startswith(MUTABLE) or (key.startswith("tasks.") and not key.endswith(".weight")):
            return (f"tune.space.{key}: PBT changes values in the middle of a run, and this one cannot change "
                    "there (the optimizer state is cloned from the donor, the model is fixed); PBT mutates "
                    "weights, tasks.<t>.weight and sampling.* only")
    return None


def mutations(space: dict) -> dict:
    """Ray's ``hyperparam_mutations`` from the search space: a Tune ``choice`` becomes its
    list (PBT shifts along a list, but would multiply a Domain's value by 0.8/1.2, which
    a string cannot take); numeric domains stay domains (perturbed or resampled)."""
    return {k: list(d.categories) if isinstance(d, Categorical) else d for k, d in space.items()}


class ClipToSpace:
    """PBT's ``custom_explore_fn``: Ray perturbs a number by 0.8x/1.2x with no regard for
    its domain, so repeated perturbations leave the space (``sampling.temperature`` below
    its schema's 1.0, a weight past the range searched). Every value is put back within
    its domain's bounds, which ``parse_tune_section`` checked are valid configs. A class,
    not a closure: the scheduler is pickled with the experiment."""

    def __init__(self, space: dict):
        self.bounds = {k: (d.lower, d.upper - 1 if isinstance(d, Integer) else d.upper)  # randint: upper exclusive
                       for k, d in space.items() if isinstance(d, (Float, Integer))}

    def __call__(self, config: dict) -> dict:
        for key, (low, high) in self.bounds.items():
            if key in config:
                config[key] = type(config[key])(min(max(config[key], low), high))
        return config


class FinalStepAware(PopulationBasedTraining):
    """Ray's PBT, except at a trial's last step: Ray would perturb there too (whenever
    ``training.steps`` is a multiple of the interval), cloning a finished member into
    another that has nothing left to train, whose config and results would then no
    longer belong together."""

    def __init__(self, *args, last_step: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.last_step = last_step

    def on_trial_result(self, tune_controller, trial, result):
        if result.get(self._time_attr, 0) >= self.last_step:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)


def scheduler(pbt: PbtConfig, space: dict, last_step: int):
    return FinalStepAware(
        time_attr="step", metric=AGGREGATE, mode="max", perturbation_interval=pbt.perturbation_interval,
        hyperparam_mutations=mutations(space), quantile_fraction=pbt.quantile_fraction,
        resample_probability=pbt.resample_probability, custom_explore_fn=ClipToSpace(space), synch=pbt.synch,
        last_step=last_step)


def run_segments(cfg, data_ref, trial_id: str, sweep_dir: str, pbt: PbtConfig) -> None:
    """The trial under PBT: segments of ``perturbation_interval`` steps, each a Train run
    resumed from the checkpoint the trial's Tune checkpoint points at. ``cfg`` holds the
    trial's current values: after an exploit, the explored ones (the static weighting
    reads its weights from the config, not from the checkpoint)."""
    import ray.tune

    from ecomtl.train.trainer import build_trainer, storage_path

    resume, step = None, 0
    start = ray.tune.get_checkpoint()
    if start is not None:
        with start.as_directory() as d:
            pointer = json.loads(Path(d, POINTER_FILE).read_text())
        resume, step = pointer.get("uri") or pointer["path"], int(pointer["step"])
        if pointer["trial_id"] != trial_id:  # PBT cloned another member of the population
            _log_exploit(sweep_dir, trial_id, pointer)
    while step < cfg.training.steps:
        end = min(step + pbt.perturbation_interval, cfg.training.steps)
        # a fresh run name per segment: a Train run restores its own latest checkpoint
        # before resume_from, which would undo an exploit; and a segment's checkpoint is
        # never deleted by a later segment's keep_checkpoints (another run), so every
        # pointer a member of the population may clone stays valid
        trainer = build_trainer(cfg, data_ref, run_name=f"{trial_id}-to{end:07d}-{uuid.uuid4().hex[:6]}",
                                stop_at=end, resume_from=resume)
        result = trainer.fit()
        if result.error:
            raise result.error
        if result.checkpoint is None:
            raise RuntimeError(f"trial {trial_id}: the segment to step {end} reported no checkpoint")
        # the run's latest checkpoint (Train always keeps it), the one at ``end``
        step = int(result.metrics["step"])
        resume = checkpoint_uri(storage_path(cfg), result.checkpoint.path)
        metrics = dict(result.metrics, checkpoint_path=result.checkpoint.path, reported_at=time.time())
        with tempfile.TemporaryDirectory(prefix="ecomtl-pbt-") as d:
            Path(d, POINTER_FILE).write_text(json.dumps({"path": result.checkpoint.path, "uri": resume, "step": step,
                                                         "trial_id": trial_id, AGGREGATE: metrics.get(AGGREGATE)}))
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(d))


def checkpoint_uri(storage: str, path: str) -> str:
    """A Train checkpoint's location that ``ray.train.Checkpoint`` resolves on any node:
    ``Checkpoint.path`` drops the scheme of remote storage (``bucket/prefix/...``), which
    alone would be read as a local path."""
    if "://" not in storage or storage.startswith("file://"):
        return path
    return f"{storage.split('://', 1)[0]}://{path.lstrip('/')}"


def _log_exploit(sweep_dir: str, trial_id: str, pointer: dict) -> None:
    if "://" in sweep_dir:
        return
    with open(os.path.join(sweep_dir, EXPLOITS_FILE), "a") as f:
        f.write(json.dumps({"trial_id": trial_id, "cloned": pointer["trial_id"], "step": pointer["step"],
                            AGGREGATE: pointer.get(AGGREGATE), "t": time.time()}) + "\n")


def read_exploits(sweep_dir: str) -> list[dict]:
    path = Path(sweep_dir, EXPLOITS_FILE)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
