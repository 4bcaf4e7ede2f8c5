"""A real ExperimentConfig (the shipped tiny one: tasks rating, stars, attributes, match)
with a chosen weighting, so that options go through the schema as in a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecomtl.config.load import load_config

TASKS = ["rating", "stars", "attributes", "match"]


@pytest.fixture(scope="session")
def make_cfg(data_root):
    """Nothing here trains or writes, so the config's output path is never used."""
    def make(kind: str, zero_stage: int = 0, **options):
        tiny = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"
        return load_config(tiny, [f"data_root={data_root}", f"weighting.kind={kind}",
                                  f"weighting.options={json.dumps(options)}", f"distributed.zero_stage={zero_stage}"])

    return make


@pytest.fixture(scope="session")
def make_weighting(make_cfg):
    from ecomtl.weighting import WEIGHTINGS

    def make(kind: str, **options):
        return WEIGHTINGS.get(kind)(make_cfg(kind, **options))

    return make


@pytest.fixture(scope="session")
def two_ranks(tmp_path_factory):
    """``run(worker_module, *args)``: ``worker_module.main(rank, 2, port, *args, out_dir)``
    in 2 spawned processes; returns each rank's ``rank{r}.json``. The worker is a plain
    module beside the tests, found by name, because spawned children import the function
    they run (a test module loaded with --import-mode=importlib has no importable name)."""
    import importlib
    import socket
    import sys

    import torch.multiprocessing as mp

    def run(worker_module: str, *args) -> list[dict]:
        here = str(Path(__file__).parent)
        out = tmp_path_factory.mktemp(worker_module)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        sys.path.insert(0, here)  # spawned children inherit sys.path
        try:
            worker = importlib.import_module(worker_module)
            mp.spawn(worker.main, args=(2, port, *args, str(out)), nprocs=2, join=True)
        finally:
            sys.path.remove(here)
        return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]

    return run
