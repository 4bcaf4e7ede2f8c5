"""Serve fixtures: a tiny bundle built without training, and the app on the session's
local Ray with HTTP on 127.0.0.1 at a free port (other test sessions may hold 8000)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

# Serve's routers push autoscaling metrics every 10 s by default: a burst test would
# wait tens of seconds to see anything. Set before the session's Ray starts (its
# processes inherit the environment); only Serve reads these.
os.environ.setdefault("RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S", "0.5")

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, data_root) -> str:
    """The tiny config's heads plus a ranking head (offers grouped by the left offer):
    every head type that reads an encoder, each behind its own route."""
    from ecomtl.config.load import config_from_dict, read_yaml
    from ecomtl.model.predictor import untrained_bundle

    data = read_yaml(CONFIGS / "tiny.yaml")
    data["sources"]["offers"]["group"] = "left"
    data["tasks"]["twins"] = {"source": "offers", "head": "ranking", "label": "label"}
    cfg = config_from_dict(data, [f"data_root={data_root}"])
    return str(untrained_bundle(cfg, tmp_path_factory.mktemp("bundle") / "tiny"))


# Small CPU shares so that every replica (and scaled-up ones) fits the 4 logical CPUs of
# the test Ray on a 2-core machine; one torch thread each to avoid oversubscription.
LIGHT = {"ray_actor_options": {"num_cpus": 0.1}, "torch_threads": 1}


def make_app_args(bundle: str, **overrides) -> dict:
    args = {"bundle": bundle, "max_items": 8, "max_text_chars": 2000,
            "ingress": dict(LIGHT), "encoder": dict(LIGHT), "heads": dict(LIGHT)}
    args.update(overrides)
    return args


@pytest.fixture(scope="session")
def app_args():
    """``app_args(bundle, **overrides)``: test-sized app builder arguments."""
    return make_app_args


@pytest.fixture(scope="session")
def serve_http(ray_local):
    """Serve's HTTP proxy on loopback; shut down with the session."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="module")
def served(serve_http, tiny_bundle):
    """The app from the tiny bundle; deleted after the module."""
    from ray import serve

    from ecomtl.serve.app import build_app

    serve.run(build_app(make_app_args(tiny_bundle)), name="ecomtl", route_prefix="/")
    yield serve_http
    serve.delete("ecomtl")


@pytest.fixture(scope="session")
def deploy(serve_http):
    """``with deploy(args, name, prefix) as base_url:`` an app for a block; deleted after."""
    from contextlib import contextmanager

    from ray import serve

    from ecomtl.serve.app import build_app

    @contextmanager
    def run(args: dict, name: str, prefix: str):
        serve.run(build_app(args), name=name, route_prefix=prefix)
        try:
            yield serve_http + prefix
        finally:
            serve.delete(name)

    return run
