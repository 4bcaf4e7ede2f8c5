"""The ``tune:`` section of an experiment YAML → a validated sweep spec and a Tune
search space.

    tune:
      mode: single                  # single: maximise `aggregate`; multi: every task's score (Pareto)
      num_samples: 12
      max_concurrent: auto          # or an int; always capped by what the cluster can hold
      seed: 0                       # Optuna TPE seed
      startup_trials: 4             # random trials before TPE takes over
      include_default: true         # run the config as written as trial 0 (the baseline)
      time_budget_min: 25           # optional: no new trials after this, the running one stops
      single_task: false            # single-task runs of each head at the compute it got
      asha: {grace_steps: 50, reduction_factor: 2}     # null: no early stopping; grace default: eval_every
      pbt: {perturbation_interval: 300}                # instead of Optuna + ASHA (asha: null; tune/pbt.py)
      space:
        weights: {dist: loguniform, low: 0.25, high: 4.0}   # every task's loss weight
        # weights: {dist: simplex}                          # or a normalised weight vector
        optim.lr: {dist: loguniform, low: 3.0e-5, high: 3.0e-4}
        sampling.temperature: {dist: uniform, low: 1.0, high: 5.0}

Every key of ``space`` other than ``weights`` is a dotted field of the experiment
schema (``tasks.rating.weight`` works too). Both bounds (or every choice) are applied to
the base config and validated by the schema, so a bad space fails before any trial
starts, naming the field.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ecomtl.config.load import ConfigError, apply_overrides, config_from_dict, format_validation_error
from ecomtl.config.schema import ExperimentConfig
from ecomtl.evaluation import AGGREGATE, selected_tasks
from ecomtl.tune.pbt import PbtConfig, check_pbt

WEIGHTS = "weights"
# Simplex weights are sampled as one raw uniform per task (Optuna sees independent
# dimensions, which TPE handles well) and mapped to -log(u) normalised: a Dirichlet(1)
# vector, scaled so the weights average 1 and the effective learning rate stays put.
SIMPLEX_PREFIX = "weights_raw."


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Dist(_Strict):
    dist: Literal["loguniform", "uniform", "int", "choice", "simplex"]
    low: Optional[float] = None
    high: Optional[float] = None
    values: Optional[list[Any]] = None

    @model_validator(mode="after")
    def _bounds(self):
        if self.dist == "choice":
            if not self.values:
                raise ValueError("'choice' needs a non-empty 'values' list")
        elif self.dist != "simplex":
            if self.low is None or self.high is None:
                raise ValueError(f"'{self.dist}' needs 'low' and 'high'")
            if not self.low < self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            if self.dist == "loguniform" and self.low <= 0:
                raise ValueError("'loguniform' needs low > 0")
        return self

    def samples(self) -> list[Any]:
        """Values that must all be valid in the schema: the bounds, or every choice."""
        if self.dist == "choice":
            return list(self.values or [])
        if self.dist == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def to_tune(self):
        from ray import tune

        if self.dist == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.dist == "uniform":
            return tune.uniform(self.low, self.high)
        if self.dist == "int":
            return tune.randint(int(self.low), int(self.high) + 1)  # inclusive, as written
        return tune.choice(self.values)


class AshaConfig(_Strict):
    grace_steps: Optional[int] = Field(None, ge=1, description="optimizer steps before a trial can be stopped "
                                       "(default: training.eval_every, the first evaluation)")
    reduction_factor: float = Field(2.0, gt=1)


class TuneSection(_Strict):
    mode: Literal["single", "multi"] = "single"
    num_samples: int = Field(8, ge=1)
    max_concurrent: Union[int, Literal["auto"]] = "auto"
    seed: int = 0
    startup_trials: int = Field(4, ge=1, description="random trials before TPE models the results (Optuna's default "
                                "is 10: too many for a sweep of ten)")
    trial_cpus: float = Field(0.0, ge=0, description="CPUs reserved for each trial's driver function, which only "
                              "waits on its Train run (whose workers reserve their own CPUs/GPUs)")
    time_budget_min: Optional[float] = Field(None, gt=0, description="stop the search after this many minutes "
                                             "(the trial then running ends at its last report)")
    include_default: bool = Field(True, description="trial 0 = the config as written (the baseline)")
    single_task: bool = False
    final_eval: bool = Field(True, description="score the finalists (see final_eval_top) on the whole "
                       "validation split and pick the best bundle by that score")
    final_eval_top: int = Field(3, ge=1, description="with final_eval: the best bundle is chosen among this many "
                                "trials (the top ones by the sampled aggregate that ran their whole budget, and the "
                                "default) by their aggregate on the whole validation split, not by the sample")
    asha: Optional[AshaConfig] = AshaConfig()
    pbt: Optional[PbtConfig] = Field(None, description="Population Based Training over the space instead of "
                                     "Optuna + ASHA (tune/pbt.py); needs asha: null")
    space: dict[str, Dist]

    @model_validator(mode="after")
    def _space(self):
        if not self.space:
            raise ValueError("space: at least one entry is required")
        if isinstance(self.max_concurrent, int) and self.max_concurrent < 1:
            raise ValueError("max_concurrent must be >= 1 or 'auto'")
        for key, d in self.space.items():
            if d.dist == "simplex" and key != WEIGHTS:
                raise ValueError(f"space.{key}: 'simplex' is only for 'weights'")
        return self


#: task fields that define the selection objective: fixed for a sweep, never searched
SELECTION_FIELDS = ("metric", "score_weight")


def parse_tune_section(cfg: ExperimentConfig) -> TuneSection:
    """Validate ``cfg.tune`` against the schema above and the space against ``cfg``."""
    if not cfg.tune:
        raise ConfigError("the config has no 'tune:' section (see ecomtl/tune/space.py)")
    try:
        section = TuneSection.model_validate(cfg.tune)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err).replace("\n  ", "\n  tune.")) from None
    base = cfg.model_dump(mode="json")
    for key, d in section.space.items():
        if key == WEIGHTS:
            continue
        parts = key.split(".")
        if parts[0] == "tasks" and parts[-1] in SELECTION_FIELDS:
            # trials scored on different metrics or weights are not comparable: the sweep
            # would pick whichever objective is easiest, not the best model
            raise ConfigError(f"tune.space.{key}: {parts[-1]} defines what a trial is scored on; searching it "
                              "makes trials incomparable (set it in the base config instead)")
        _check_field(base, key)
        for value in d.samples():
            try:
                config_from_dict(base, [f"{key}={value}"])
            except ConfigError as err:
                raise ConfigError(f"tune.space.{key}: value {value!r} is not valid here:\n{err}") from None
    if WEIGHTS in section.space and any(k.startswith("tasks.") and k.endswith(".weight") for k in section.space):
        raise ConfigError("tune.space: give either 'weights' or per-task 'tasks.<name>.weight', not both")
    if section.pbt and (reason := check_pbt(section.pbt, section, cfg)):
        raise ConfigError(reason)
    if section.asha:
        if section.asha.grace_steps is None:
            section.asha.grace_steps = cfg.training.eval_every
        if section.asha.grace_steps >= cfg.training.steps:
            raise ConfigError(f"tune.asha.grace_steps ({section.asha.grace_steps}) must be below training.steps "
                              f"({cfg.training.steps}): ASHA can only stop a trial at an evaluation before its "
                              "last step (or set tune.asha: null)")
    return section


def _check_field(base: dict, key: str) -> None:
    node: Any = base
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "(not a section)"
            where = ".".join(parts[:i]) or "<root>"
            raise ConfigError(f"tune.space.{key}: {where} has no field {part!r}; known: {known}")
        node = node[part]
    if isinstance(node, dict):
        raise ConfigError(f"tune.space.{key}: is a section, not a field")


def param_space(cfg: ExperimentConfig, section: TuneSection) -> dict:
    """Flat ``{dotted key: Tune domain}`` (Optuna sees one dimension per key)."""
    space = {}
    for key, d in section.space.items():
        if key != WEIGHTS:
            space[key] = d.to_tune()
        elif d.dist == "simplex":
            from ray import tune

            # lower bound > 0: -log(u) must stay finite
            space.update({f"{SIMPLEX_PREFIX}{t}": tune.uniform(1e-3, 1.0) for t in cfg.tasks})
        else:
            space.update({f"tasks.{t}.weight": d.to_tune() for t in cfg.tasks})
    return space


def default_point(cfg: ExperimentConfig, space: dict) -> dict:
    """The config as written, as a point of the space (for ``points_to_evaluate``)."""
    base = cfg.model_dump(mode="json")
    point = {}
    for key in space:
        if key.startswith(SIMPLEX_PREFIX):
            # equal raw values give equal weights; uniform weights *are* the default only
            # when the config's weights are equal, which the simplex assumes anyway
            point[key] = math.exp(-1.0)
            continue
        node = base
        for part in key.split("."):
            node = node[part]
        point[key] = node
    return point


def apply_params(cfg: ExperimentConfig, params: dict) -> ExperimentConfig:
    """A trial's config: the base with the sampled values written in (and validated)."""
    params = dict(params)
    raw = {k[len(SIMPLEX_PREFIX):]: params.pop(k) for k in list(params) if k.startswith(SIMPLEX_PREFIX)}
    overrides = [f"{k}={v}" for k, v in params.items()]
    if raw:
        logs = {t: -math.log(u) for t, u in raw.items()}
        total = sum(logs.values())
        overrides += [f"tasks.{t}.weight={len(logs) * v / total}" for t, v in logs.items()]
    data = apply_overrides(cfg.model_dump(mode="json"), overrides)
    data["tune"] = None
    return config_from_dict(data)


def objectives(cfg: ExperimentConfig, section: TuneSection) -> tuple[list[str], list[str]]:
    """Metrics and modes given to Optuna: the aggregate, or the score of every task
    selected on (a score_weight of 0 reports a task without selecting on it)."""
    if section.mode == "multi":
        names = [f"{t}/score" for t in selected_tasks(cfg)]
        return names, ["max"] * len(names)
    return [AGGREGATE], ["max"]


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_sweep_config(path: str, overrides: list[str] = ()) -> tuple[ExperimentConfig, TuneSection]:
    """A sweep YAML may name ``base: demo.yaml`` (relative to itself): the experiment it
    tunes, merged under the sweep file's own keys, so the sweep follows the demo as it
    changes instead of a stale copy."""
    from pathlib import Path

    from ecomtl.config.load import read_yaml

    data = read_yaml(path)
    seen = {Path(path).resolve()}
    while "base" in data:
        base_path = (Path(path).parent / data.pop("base")).resolve()
        if base_path in seen:
            raise ConfigError(f"{path}: 'base' chain loops at {base_path}")
        seen.add(base_path)
        base = read_yaml(base_path)
        data, path = _merge(base, data), str(base_path)
    cfg = config_from_dict(data, overrides)
    return cfg, parse_tune_section(cfg)
