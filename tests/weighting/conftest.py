"""A real ExperimentConfig (the shipped tiny one: tasks rating, stars, attributes, match)
with a chosen weighting, so that options go through the schema as in a run."""

from __future__ import annotations

import json

import pytest

from ecomtl.config.load import load_config

TASKS = ["rating", "stars", "attributes", "match"]


@pytest.fixture
def make_cfg(data_root, tmp_path):
    def make(kind: str, zero_stage: int = 0, **options):
        from pathlib import Path

        tiny = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"
        return load_config(tiny, [f"data_root={data_root}", f"output.storage_path={tmp_path / 'runs'}",
                                  f"weighting.kind={kind}", f"weighting.options={json.dumps(options)}",
                                  f"distributed.zero_stage={zero_stage}"])

    return make


@pytest.fixture
def make_weighting(make_cfg):
    from ecomtl.weighting import WEIGHTINGS

    def make(kind: str, **options):
        return WEIGHTINGS.get(kind)(make_cfg(kind, **options))

    return make
