"""The tune section and search space: validated against the experiment schema (no Ray)."""

import math
from pathlib import Path

import pytest
import yaml

from ecomtl.config.load import ConfigError
from ecomtl.tune.pareto import dominates, pareto_front
from ecomtl.tune.space import SIMPLEX_PREFIX, apply_params, default_point, load_sweep_config, param_space
from ecomtl.tune.trial import single_task_config, source_steps

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"
SWEEPS = sorted(p for p in CONFIGS.rglob("*.yaml") if "sweep" in p.name)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweep_configs_validate(path):
    cfg, section = load_sweep_config(path)
    space = param_space(cfg, section)
    assert space, path
    # the config as written is a point of its own space, and every point is a valid config
    trial = apply_params(cfg, default_point(cfg, space))
    assert trial.tune is None and set(trial.tasks) == set(cfg.tasks)


def test_demo_sweep_searches_every_task_weight_and_lr():
    cfg, section = load_sweep_config(CONFIGS / "demo_sweep.yaml")
    space = param_space(cfg, section)
    assert len(cfg.tasks) == 7
    assert set(space) == {f"tasks.{t}.weight" for t in cfg.tasks} | {"optim.lr"}


def write_sweep(tmp_path, tune: dict, **extra) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": str(CONFIGS / "tiny.yaml"), "tune": tune, **extra}))
    return path


def space_error(tmp_path, space: dict, **tune) -> str:
    with pytest.raises(ConfigError) as err:
        load_sweep_config(write_sweep(tmp_path, {"space": space, **tune}))
    return str(err.value)


def test_invalid_spaces_fail_naming_the_field(tmp_path):
    msg = space_error(tmp_path, {"optim.lrr": {"dist": "loguniform", "low": 1e-5, "high": 1e-3}})
    assert "tune.space.optim.lrr" in msg and "'lrr'" in msg and "lr" in msg
    # a bound the schema refuses (temperature >= 1), named with the schema's own message
    msg = space_error(tmp_path, {"sampling.temperature": {"dist": "uniform", "low": 0.5, "high": 3}})
    assert "tune.space.sampling.temperature" in msg and "sampling.temperature" in msg
    msg = space_error(tmp_path, {"optim.lr": {"dist": "loguniform", "low": 0, "high": 1e-3}})
    assert "tune.space.optim.lr" in msg and "low > 0" in msg
    msg = space_error(tmp_path, {"optim.lr": {"dist": "simplex"}})
    assert "space.optim.lr" in msg
    msg = space_error(tmp_path, {"optim": {"dist": "uniform", "low": 0, "high": 1}})
    assert "tune.space.optim: is a section" in msg
    msg = space_error(tmp_path, {"training.steps": {"dist": "choice", "values": [10, 0]}})
    assert "tune.space.training.steps" in msg and "value 0" in msg
    msg = space_error(tmp_path, {"optim.lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-3}},
                      asha={"grace_steps": 50})
    assert "tune.asha.grace_steps" in msg
    msg = space_error(tmp_path, {"optim.lr": {"dist": "loguniform", "low": 1e-4, "high": 1e-3}}, mode="both")
    assert "tune.mode" in msg
    # what a trial is scored on is fixed for the sweep
    msg = space_error(tmp_path, {"tasks.match.metric": {"dist": "choice", "values": ["accuracy", "macro_f1"]}})
    assert "tune.space.tasks.match.metric" in msg and "incomparable" in msg
    msg = space_error(tmp_path, {"tasks.rating.score_weight": {"dist": "uniform", "low": 0.5, "high": 2}})
    assert "tune.space.tasks.rating.score_weight" in msg


def test_weights_loguniform_and_simplex(tmp_path):
    cfg, section = load_sweep_config(write_sweep(tmp_path, {"space": {
        "weights": {"dist": "loguniform", "low": 0.25, "high": 4.0},
        "model.dropout": {"dist": "uniform", "low": 0.0, "high": 0.3}}}))
    space = param_space(cfg, section)
    assert set(space) == {f"tasks.{t}.weight" for t in cfg.tasks} | {"model.dropout"}
    trial = apply_params(cfg, {"tasks.rating.weight": 2.5, "tasks.stars.weight": 0.3,
                               "tasks.attributes.weight": 1.0, "tasks.match.weight": 4.0, "model.dropout": 0.2})
    assert trial.tasks["rating"].weight == 2.5 and trial.model.dropout == 0.2

    cfg, section = load_sweep_config(write_sweep(tmp_path, {"space": {"weights": {"dist": "simplex"}}}))
    space = param_space(cfg, section)
    assert set(space) == {f"{SIMPLEX_PREFIX}{t}" for t in cfg.tasks}
    trial = apply_params(cfg, {f"{SIMPLEX_PREFIX}{t}": u for t, u in zip(cfg.tasks, [0.9, 0.5, 0.1, 0.01])})
    weights = [t.weight for t in trial.tasks.values()]
    assert math.isclose(sum(weights) / len(weights), 1.0)  # normalised: mean weight 1
    assert weights == sorted(weights)  # smaller u → larger -log(u) → larger weight
    equal = apply_params(cfg, default_point(cfg, space))
    assert all(math.isclose(t.weight, 1.0) for t in equal.tasks.values())


def test_single_task_runs_get_the_steps_their_source_got(tiny_cfg):
    sizes = {"reviews": 400, "queries": 400, "offers": 400}
    steps = source_steps(tiny_cfg, sizes)
    assert sum(steps.values()) == tiny_cfg.training.steps  # round robin over 3 sources, 12 steps
    single = single_task_config(tiny_cfg, "stars", sizes)
    assert list(single.tasks) == ["stars"] and list(single.sources) == ["reviews"]
    assert single.training.steps == steps["reviews"] == 4


def test_pareto_front():
    modes = ["max", "max"]
    assert dominates([1, 1], [1, 0], modes) and not dominates([1, 0], [0, 1], modes)
    assert not dominates([1, 1], [1, 1], modes)
    points = [[0.5, 0.5], [0.9, 0.1], [0.1, 0.9], [0.4, 0.4], [0.5, 0.5], [float("nan"), 1.0]]
    assert pareto_front(points, modes) == [0, 1, 2, 4]  # ties both stay; NaN cannot be compared
    assert pareto_front([[1, 5], [2, 4]], ["min", "max"]) == [0]


def test_space_can_search_the_mtl_method(tmp_path):
    """The weighting, the sharing layer and the sources per step are ordinary choices;
    every point is a valid config, and a choice the schema refuses (a gradient method
    under ZeRO-2) fails before any trial, naming the field."""
    methods = {"weighting.kind": {"dist": "choice", "values": ["static", "famo", "pcgrad"]},
               "model.sharing.kind": {"dist": "choice", "values": ["hard", "mmoe", "ple"]},
               "sampling.sources_per_step": {"dist": "choice", "values": [1, "all"]}}
    cfg, section = load_sweep_config(write_sweep(tmp_path, {"num_samples": 2, "space": methods}))
    space = param_space(cfg, section)
    assert set(methods) <= set(space)
    point = apply_params(cfg, {"weighting.kind": "pcgrad", "model.sharing.kind": "ple", "sampling.sources_per_step": "all"})
    assert (point.weighting.kind, point.model.sharing.kind, point.sampling.per_step(3)) == ("pcgrad", "ple", 3)
    with pytest.raises(ConfigError, match="weighting.kind.*pcgrad|pcgrad.*zero_stage"):
        load_sweep_config(write_sweep(tmp_path, {"num_samples": 2, "space": methods}, distributed={"zero_stage": 2}))
