"""One real ``ray start --head`` cluster (own ports, own temp dir, own auth token) for the
cluster tests; stopped by pid at the end (see local_cluster.py for why not ``ray stop``)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from local_cluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def cluster():
    c = LocalCluster(head_cpus=2)
    try:
        c.start_head()
        c.wait_for_jobs_api()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def runs_dir():
    """Job outputs; a plain path both the jobs (same machine) and the tests can read."""
    d = Path(f"/tmp/ecomtl-cluster-runs-{uuid.uuid4().hex[:6]}")
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def runtime_env_json(data_root: str) -> str:
    """What a user passes with ``--runtime-env-json``: the uploaded working dir has no
    ../shared next to it, so the data root travels as an environment variable."""
    return json.dumps({"env_vars": {"ECOMTL_DATA_ROOT": data_root}})


# The training job the job-submission and recovery tests both run (same seed), so the
# uninterrupted run doubles as the reference for the interrupted one.
RECOVERY_STEPS, RECOVERY_EVAL = 18, 6
RECOVERY_OVERRIDES = [f"training.steps={RECOVERY_STEPS}", f"training.eval_every={RECOVERY_EVAL}",
                      "training.log_every=1", "training.keep_checkpoints=4", "distributed.num_workers=2",
                      "distributed.zero_stage=2", "distributed.max_failures=1"]


def train_command(runs: Path, name: str, extra: list[str] = ()) -> list[str]:
    return ["python", "jobs/train.py", "jobs/configs/tiny.yaml", f"output.storage_path={runs}",
            *RECOVERY_OVERRIDES, *extra, "--resume", name]


def bundle_metrics(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "bundle" / "metrics.json").read_text())


@pytest.fixture(scope="session")
def reference_run(cluster, runs_dir, data_root):
    """The uninterrupted training job (also the reference for the recovery test)."""
    name = "reference"
    r = cluster.ray("job", "submit", "--submission-id", "ecomtl-reference", "--working-dir", ".",
                    "--runtime-env-json", runtime_env_json(data_root), "--", *train_command(runs_dir, name),
                    check=False, cwd=REPO)
    return name, r
