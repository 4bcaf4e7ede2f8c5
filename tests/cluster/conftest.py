"""One real ``ray start --head`` cluster (own ports, own temp dir, own auth token) for the
cluster tests; stopped by pid at the end (see local_cluster.py for why not ``ray stop``)."""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib (no test dir on sys.path): make the helper
# module next to this file importable for the tests here.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from local_cluster import REPO, LocalCluster, runtime_env_json, train_command  # noqa: E402


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


@pytest.fixture(scope="session")
def reference_run(cluster, runs_dir, data_root):
    """The uninterrupted training job (also the reference for the recovery test):
    (run name, the finished ``ray job submit``, its wall seconds)."""
    name = "reference"
    t0 = time.time()
    r = cluster.ray("job", "submit", "--submission-id", "ecomtl-reference", "--working-dir", ".",
                    "--runtime-env-json", runtime_env_json(data_root), "--", *train_command(runs_dir, name),
                    check=False, cwd=REPO)
    return name, r, time.time() - t0
