"""Shipped Serve YAMLs and the app builder's arguments, without starting Serve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ecomtl.serve.schemas import AppArgs

SERVE_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "serve_configs").rglob("*.yaml"))


def test_there_are_serve_configs():
    assert SERVE_CONFIGS


@pytest.mark.parametrize("path", SERVE_CONFIGS, ids=lambda p: p.name)
def test_shipped_serve_config_is_valid(path, tiny_bundle, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    from ecomtl.serve.app import build_app

    raw = yaml.safe_load(path.read_text())
    ServeDeploySchema.model_validate(raw)  # Serve's own schema of the file
    monkeypatch.setenv("ECOMTL_BUNDLE", tiny_bundle)
    for app in raw["applications"]:
        assert app["import_path"] == "ecomtl.serve.app:build_app"
        args = AppArgs.model_validate(app["args"])
        assert args.encoder.batching.max_batch_size >= 1
        build_app(app["args"])  # builds the deployment graph (no Ray needed)


def test_unknown_keys_and_bad_values_name_the_field(tiny_bundle):
    with pytest.raises(ValueError, match="heads.batching.max_batch"):
        AppArgs.model_validate({"bundle": tiny_bundle, "heads": {"batching": {"max_batch": 4}}})
    with pytest.raises(ValueError, match="autoscaling_config"):
        AppArgs.model_validate({"bundle": tiny_bundle, "heads": {"autoscaling_config": {"min_replicas": -1}}})
    with pytest.raises(ValueError, match="tasks.rating"):
        AppArgs.model_validate({"bundle": tiny_bundle, "tasks": {"rating": {"ray_actor_options": {"cpus": 1}}}})


def test_a_full_request_must_fit_one_batch(tiny_bundle):
    with pytest.raises(ValueError, match="heads.batching.max_batch_size .16. is below max_items .32."):
        AppArgs.model_validate({"bundle": tiny_bundle, "max_items": 32, "heads": {"batching": {"max_batch_size": 16}}})


def test_per_task_override_merges_over_head_defaults(tiny_bundle):
    args = AppArgs.model_validate({"bundle": tiny_bundle, "heads": {"torch_threads": 1},
                                   "tasks": {"rating": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 3}}}})
    assert args.head_args("rating").autoscaling_config["max_replicas"] == 3
    assert args.head_args("rating").torch_threads == 1
    assert args.head_args("match").autoscaling_config["max_replicas"] == 1


def test_build_app_refuses_bad_bundle_and_unset_variable(tmp_path, tiny_bundle, monkeypatch):
    from ecomtl.model.bundle import BundleError
    from ecomtl.serve.app import build_app

    with pytest.raises(BundleError, match="not a complete bundle"):
        build_app({"bundle": str(tmp_path)})
    monkeypatch.delenv("ECOMTL_NOPE", raising=False)
    with pytest.raises(ValueError, match="unset environment variable"):
        build_app({"bundle": "${ECOMTL_NOPE}"})
    with pytest.raises(ValueError, match="not in the bundle"):
        build_app({"bundle": tiny_bundle, "tasks": {"nope": {}}})
