"""cluster.yaml is checked by Ray's own cluster-launcher code: the defaults of its cloud
provider are merged in exactly as ``ray up`` does (``prepare_config``), then the result
is validated against the autoscaler's JSON schema (``validate_config``). A typo in a key
fails here, in CI, rather than on the first ``ray up``."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_validator(raw):
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    gpu = config["available_node_types"]["gpu_8x_h100"]
    assert gpu["resources"]["GPU"] == 8 and gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert config["head_node_type"] == "head"
    assert config["available_node_types"]["head"]["resources"].get("GPU", 0) == 0


def test_head_serves_dashboard_for_job_submission(raw):
    start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-port=8265" in start and "--head" in start


def test_setup_installs_the_project_like_the_readme(raw):
    readme = (REPO / "README.md").read_text()
    setup = "\n".join(raw["setup_commands"])
    assert 'pip install -q -e ".[test]"' in setup and 'pip install -e ".[test]"' in readme
    assert "torch==2.13.0" in setup
    assert raw["docker"]["image"].startswith("rayproject/ray:2.60.0")


@pytest.mark.parametrize("mutate, error", [
    (lambda c: c.update(max_worker=3), jsonschema.ValidationError),  # typo of max_workers
    (lambda c: c["available_node_types"]["gpu_8x_h100"].update(min_worker=1), jsonschema.ValidationError),
    (lambda c: c.update(head_node_type="missing"), ValueError),
])
def test_a_typo_fails_validation(raw, mutate, error):
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(error):
        validate_config(prepare_config(broken))
