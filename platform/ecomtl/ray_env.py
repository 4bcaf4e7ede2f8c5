"""Connecting to Ray the same way from the CLI, jobs/ scripts and tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def runtime_env() -> dict:
    """Ship this package to every worker with ``py_modules`` (the driver's exact code,
    whether it was pip-installed, run from a checkout, or uploaded by ``ray job submit``)
    and carry the data root so that ``../shared``-relative defaults resolve the same."""
    from ecomtl.config.schema import DATA_ROOT_ENV

    env_vars = {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore::FutureWarning"}
    if os.environ.get(DATA_ROOT_ENV):
        env_vars[DATA_ROOT_ENV] = os.environ[DATA_ROOT_ENV]
    return {"py_modules": [str(PACKAGE_DIR)], "env_vars": env_vars}


# Ray Serve's own high-throughput mode (Ray >= 2.55, "Enable High Throughput on Ray
# Serve"): gRPC between replicas, user code and router on the replica's main event loop,
# direct ingress. Measured with benchmarks/serve_load.py on 2 CPUs, same bundle, back to
# back: per-request overhead at 1 client 19.3 → 14.6 ms p50, single-text requests at
# 32 clients 36.3 → 48.0/s. Every Serve process reads it when it starts, so it is set
# where Ray starts: here for a Ray that ecomtl starts, in cluster.yaml for a cluster.
SERVE_FAST_PATH = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def serve_fast_path_defaults() -> dict:
    """Turn Ray Serve's throughput mode on for a Ray started from this process, unless
    the user set the variable (``RAY_SERVE_THROUGHPUT_OPTIMIZED=0`` keeps Ray's
    defaults); returns the values in effect."""
    for key, value in SERVE_FAST_PATH.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in SERVE_FAST_PATH}


def init_ray(**kwargs) -> None:
    """Join the cluster named by RAY_ADDRESS (as under ``ray job submit``) or start a local
    instance. Already connected (e.g. inside a job, or a test fixture): nothing to do."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ray.init(runtime_env=_without_job_keys(runtime_env()), **kwargs)


def _without_job_keys(env: dict) -> dict:
    """Under ``ray job submit``, Ray merges the job's runtime env with ours and refuses any
    key set in both (e.g. ECOMTL_DATA_ROOT passed with --runtime-env-json, which we also
    forward). The job's values are already in effect, so leave those keys to the job."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    injected = os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    if not injected:
        return env
    job_env = json.loads(injected).get("runtime_env") or {}
    out = {k: v for k, v in env.items() if k != "env_vars" and k not in job_env}
    env_vars = {k: v for k, v in env.get("env_vars", {}).items() if k not in job_env.get("env_vars", {})}
    if env_vars:
        out["env_vars"] = env_vars
    return out


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0
