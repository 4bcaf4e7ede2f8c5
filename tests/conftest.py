"""Shared fixtures. Integration tests use a real local Ray instance (never a mock)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "jobs" / "configs"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_configure(config):
    from ecomtl.config.schema import resolve_data_root

    root = Path(resolve_data_root())
    if not (root / "clothing_reviews").is_dir():
        raise pytest.UsageError(f"real data not found at {root}: put ../shared beside the repo or set ECOMTL_DATA_ROOT")


@pytest.fixture(scope="session")
def data_root() -> str:
    from ecomtl.config.schema import resolve_data_root

    return resolve_data_root()


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the session. ``address="local"`` always starts a fresh
    instance, never joining a cluster that another process started with ``ray start``."""
    import ray

    from ecomtl.ray_env import runtime_env

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, runtime_env=runtime_env(),
                 log_to_driver=True)
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_cfg(tmp_path, data_root):
    """The shipped tiny config, writing under a per-test directory."""
    from ecomtl.config.load import load_config

    return load_config(CONFIGS / "tiny.yaml", [f"output.storage_path={tmp_path / 'runs'}", f"data_root={data_root}"])
