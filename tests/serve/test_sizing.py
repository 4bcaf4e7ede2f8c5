"""``ecomtl serve BUNDLE`` defaults fit the machine; API keys are read fail-closed."""

from __future__ import annotations

import pytest

from ecomtl.serve.guards import key_ok, read_keys
from ecomtl.serve.schemas import AppArgs, AuthArgs
from ecomtl.serve.sizing import describe, fit_to_machine


def total_cpus(args: dict, n_tasks: int) -> float:
    cpus = lambda part: args[part]["ray_actor_options"]["num_cpus"]  # noqa: E731
    return cpus("ingress") + n_tasks * cpus("heads") + (cpus("encoder") if "encoder" in args else 0)


@pytest.mark.parametrize("layout", ["shared", "naive"])
@pytest.mark.parametrize("cpus,n_tasks", [(2, 4), (2, 6), (1, 4), (16, 6), (0.8, 3)])
def test_defaults_fit_the_cpus(layout, cpus, n_tasks, tiny_bundle):
    args = fit_to_machine(layout, n_tasks, cpus)
    assert total_cpus(args, n_tasks) <= cpus + 1e-9
    for part in args.values():
        assert part["autoscaling_config"]["max_replicas"] == 1 and part["torch_threads"] >= 1
    AppArgs.model_validate({"bundle": tiny_bundle, "layout": layout, **args})  # valid app args
    assert "CPU" in describe(args)


def test_the_encoder_gets_what_the_light_replicas_leave():
    args = fit_to_machine("shared", 4, 2)
    assert args["encoder"]["ray_actor_options"]["num_cpus"] == 1.5 and args["encoder"]["torch_threads"] == 2


def test_too_few_cpus_is_a_clear_error():
    with pytest.raises(ValueError, match="too few for 30 tasks"):
        fit_to_machine("shared", 30, 2)


def test_api_keys_from_env_and_file(tmp_path, monkeypatch):
    f = tmp_path / "keys"
    f.write_text("# comment\nkey-a\n\n  key-b  \n")
    monkeypatch.setenv("ECOMTL_TEST_KEYS", "key-c, key-d")
    keys = read_keys(AuthArgs(api_keys_env="ECOMTL_TEST_KEYS", api_keys_file=str(f)))
    assert keys == [b"key-c", b"key-d", b"key-a", b"key-b"]
    assert key_ok(b"key-b", keys) and not key_ok(b"key-", keys) and not key_ok(None, keys)
    assert read_keys(AuthArgs()) == []


def test_auth_fails_closed(monkeypatch):
    monkeypatch.delenv("ECOMTL_NO_SUCH_KEYS", raising=False)
    with pytest.raises(ValueError, match="no API key"):
        read_keys(AuthArgs(api_keys_env="ECOMTL_NO_SUCH_KEYS"))


def test_queues_are_bounded_by_default(tiny_bundle):
    args = AppArgs.model_validate({"bundle": tiny_bundle})
    for part in (args.encoder, args.heads):
        opts = part.serve_options()
        assert 0 < opts["max_queued_requests"] < 10_000
    ingress = args.ingress.ingress_serve_options()
    # Serve lets more reach the ingress than it admits (its own 503 would be plain text)
    assert ingress["max_queued_requests"] == -1
    assert ingress["max_ongoing_requests"] > args.ingress.ongoing + args.ingress.queued
    assert args.body_limit > args.max_items * args.max_text_chars
