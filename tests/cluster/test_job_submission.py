"""``ray job submit`` against a real ``ray start --head`` cluster, exactly as the README
tells a user to: from the repo root, ``--working-dir .``, the data root in the runtime env.

The cluster keeps Ray 2.60's token authentication on; the CLI gets the token through
``RAY_AUTH_TOKEN`` (a user exports ``RAY_AUTH_TOKEN=$(ray get-auth-token)``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from local_cluster import REPO, RECOVERY_EVAL, RECOVERY_STEPS, bundle_metrics, runtime_env_json, train_command

pytestmark = pytest.mark.integration


def test_train_job_succeeds_streams_logs_and_exports(reference_run, runs_dir):
    name, r, _ = reference_run
    assert r.returncode == 0, r.stdout[-4000:]
    # Logs streamed back to the submitting terminal, from the workers too.
    assert "Job 'ecomtl-reference' succeeded" in r.stdout
    assert re.search(r"RayTrainWorker pid=\d+\).*\[ecomtl\] step %d/%d" % (RECOVERY_STEPS, RECOVERY_STEPS), r.stdout)
    metrics = bundle_metrics(runs_dir, name)
    assert metrics["checkpoint_step"] in range(RECOVERY_EVAL, RECOVERY_STEPS + 1, RECOVERY_EVAL)


def test_evaluate_and_export_jobs(cluster, reference_run, runs_dir, data_root):
    name, r, _ = reference_run
    assert r.returncode == 0
    bundle = runs_dir / name / "bundle"
    ev = cluster.ray("job", "submit", "--working-dir", ".", "--runtime-env-json", runtime_env_json(data_root),
                     "--", "python", "jobs/evaluate.py", str(bundle), "--max-rows", "40", cwd=REPO)
    payload = ev.stdout[ev.stdout.index("{"):ev.stdout.rindex("}") + 1]
    assert set(json.loads(payload)["tasks"]) == {"rating", "stars", "attributes", "match"}
    checkpoint = sorted((runs_dir / name).glob("step_*"))[-1]
    out = runs_dir / "exported"
    cluster.ray("job", "submit", "--working-dir", ".", "--", "python", "jobs/export.py", str(checkpoint), str(out),
                cwd=REPO)
    assert (out / "model.safetensors").is_file() and (out / "backbone" / "config.json").is_file()


def test_failing_job_exit_code_and_logs(cluster, runs_dir):
    """A job that cannot find its data fails: non-zero exit, FAILED status, and the reason
    (which source, which path) readable afterwards in ``ray job logs``."""
    sid = "ecomtl-bad-data-root"
    r = cluster.ray("job", "submit", "--submission-id", sid, "--working-dir", ".", "--",
                    *train_command(runs_dir, "bad", ["data_root=/nonexistent/datasets"]), check=False, cwd=REPO)
    assert r.returncode != 0
    assert "failed" in cluster.ray("job", "status", sid, check=False).stdout.lower()
    logs = cluster.ray("job", "logs", sid).stdout
    assert "DataError" in logs and "/nonexistent/datasets/clothing_reviews/train.csv" in logs
    # The traceback runs through the uploaded working dir's copy of the package (what
    # py_modules then ships to the workers), not a version installed on the cluster.
    assert re.search(r"_ray_pkg_\w+/platform/ecomtl/data/prepare\.py", logs), logs[-3000:]


@pytest.mark.slow  # ~55 s; tests/tune/test_sweep.py keeps a real sweep in CI
def test_tune_job_runs_a_sweep_and_hands_on_its_best_bundle(cluster, runs_dir, data_root):
    """``jobs/tune.py`` under ``ray job submit``: the trials are Ray Train runs scheduled
    by Tune on the cluster; the sweep's table, best config and best bundle land in
    ``storage_path``."""
    r = cluster.ray("job", "submit", "--submission-id", "ecomtl-tune", "--working-dir", ".", "--runtime-env-json",
                    runtime_env_json(data_root), "--", "python", "jobs/tune.py", "jobs/configs/tiny_sweep.yaml",
                    f"output.storage_path={runs_dir}", "tune.num_samples=1", "tune.max_concurrent=1",
                    "training.steps=6", "training.eval_every=3", "--name", "job-sweep", check=False, cwd=REPO)
    assert r.returncode == 0 and "Job 'ecomtl-tune' succeeded" in r.stdout, r.stdout[-4000:]
    sweep = runs_dir / "job-sweep"
    bundle = Path(re.search(r"best bundle: (\S+)", r.stdout).group(1))
    assert bundle.is_relative_to(sweep) and (bundle / "model.safetensors").is_file()
    table = (sweep / "trials.csv").read_text().splitlines()
    assert len(table) == 1 + 1  # header + the trial
    assert (sweep / "best_config.yaml").is_file()
