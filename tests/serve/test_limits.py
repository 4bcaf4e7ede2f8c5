"""Back-pressure, deadlines, readiness, API keys and batch isolation, on one app built to
make each of them happen for sure: batches flush only when full (or after 1 s, also on an
idle replica: ``wait_when_idle``), the request deadline is 1 s, and queues are tiny. A
single-text request therefore waits past its deadline (504), a full request (8 texts)
fills a batch and answers at once, and a burst of single-text requests overflows the
queues (503 with Retry-After). Heads take one request at a time (queue of one), but stars
takes 16, so that a batch of 8 can form."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

pytestmark = pytest.mark.integration

KEY = "k-3b9f2c"
FULL = [f"review {i}" for i in range(8)]  # fills a batch of 8: no waiting
SLOW = {"batching": {"max_batch_size": 8, "batch_wait_timeout_s": 1.0, "wait_when_idle": True}}


@pytest.fixture(scope="module")
def strict(deploy, tiny_bundle, app_args, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "api_keys"
    keys.write_text(f"# one key a line\n{KEY}\nother-key\n")
    light = {"ray_actor_options": {"num_cpus": 0.1}, "torch_threads": 1}
    args = app_args(
        tiny_bundle, request_timeout_s=1.0, retry_after_s=2, auth={"api_keys_file": str(keys)},
        ingress={**light, "max_ongoing_requests": 2, "max_queued_requests": 2},
        encoder={**light, **SLOW},
        heads={**light, **SLOW, "max_ongoing_requests": 1, "max_queued_requests": 1},
        tasks={"stars": {"max_ongoing_requests": 16, "max_queued_requests": 64}})
    with deploy(args, "strict", "/strict") as base:
        yield base


def call(base, path, body=None, key=KEY, method="POST", **headers):
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return requests.request(method, base + path, json=body, headers=headers, timeout=60)


def error_of(r, status: int) -> dict:
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]


def test_api_keys(strict):
    assert error_of(call(strict, "/v1/tasks", key=None, method="GET"), 401)["code"] == "unauthorized"
    assert error_of(call(strict, "/v1/tasks", key="wrong", method="GET"), 401)["code"] == "unauthorized"
    assert error_of(call(strict, "/openapi.json", key=None, method="GET"), 401)["code"] == "unauthorized"
    r = requests.get(strict + "/v1/tasks", headers={"X-API-Key": b"\xff\xfe"}, timeout=30)
    assert error_of(r, 401)["code"] == "unauthorized"  # undecodable key bytes: a 401, not a 500
    r = requests.get(strict + "/v1/tasks", headers={"X-API-Key": "other-key"}, timeout=30)
    assert r.status_code == 200 and r.json()["bundle_version"] == r.headers["x-bundle-version"]
    assert call(strict, "/v1/tasks", method="GET").status_code == 200
    assert requests.get(strict + "/healthz", timeout=30).status_code == 200  # probes need no key


def test_deadline_is_a_json_504_and_full_batches_still_answer(strict):
    err = error_of(call(strict, "/v1/tasks/rating", {"inputs": "waits for a batch that never fills"}), 504)
    assert err["code"] == "timeout" and "1.0" in err["message"]
    # (on stars: rating's one slot may still hold the request that timed out)
    ok = call(strict, "/v1/tasks/stars", {"inputs": FULL})
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["predictions"]) == 8


def test_readiness_says_not_ready_when_the_model_does_not_answer_in_time(strict):
    r = requests.get(strict + "/readyz", timeout=30)
    assert error_of(r, 503)["code"] == "not_ready" and r.headers["retry-after"] == "2"


def test_overload_sheds_with_503_retry_after(strict):
    """12 concurrent single-text requests, each held until its 1 s deadline: the ingress
    admits 4 (2 ongoing + 2 queued); of those the head takes 2 (1 + 1). The rest are shed."""
    with ThreadPoolExecutor(12) as pool:
        rs = list(pool.map(lambda i: call(strict, "/v1/tasks/rating", {"inputs": f"text {i}"}), range(12)))
    codes = sorted(r.status_code for r in rs)
    assert set(codes) <= {503, 504}, [r.text[:200] for r in rs]
    shed = [r for r in rs if r.status_code == 503]
    assert len(shed) >= 8, codes
    for r in shed:
        assert error_of(r, 503)["code"] == "overloaded" and r.headers["retry-after"] == "2"
    assert call(strict, "/v1/tasks/stars", {"inputs": FULL}).status_code == 200  # and it answers meanwhile


def outcomes(deployment: str, send) -> list:
    """Results or errors of calls sent together (all in flight before the first wait)
    through a handle to ``deployment``. The handle lives inside an event loop: in Ray
    Serve's throughput mode (the suite's) its router runs on the caller's loop, and a
    synchronous ``handle.remote()`` fails with "no running event loop". Not Serve's
    cached handle: that one would outlive this loop and fail at ``serve.shutdown``."""
    from ray.serve.handle import DeploymentHandle

    async def run():
        handle = DeploymentHandle(deployment, "strict")
        try:
            return await asyncio.wait_for(asyncio.gather(*send(handle), return_exceptions=True), 60)
        finally:
            await handle.shutdown_async()

    return asyncio.run(run())


def test_a_bad_call_fails_alone_inside_a_head_batch(strict):
    """Eight calls that fill one batch, one of them with text no tokenizer encodes (sent
    past the HTTP validation, straight to the head): the seven others get predictions."""
    calls = [[(f"good {i}", None)] for i in range(7)] + [[("bad \ud800", None)]]

    out = outcomes("head_stars", lambda head: [head.predict.remote(c) for c in calls])
    assert all(isinstance(o, list) and "value" in o[0] for o in out[:7]), out
    assert isinstance(out[7], Exception)


def test_a_bad_call_fails_alone_inside_an_encoder_batch(strict, tiny_bundle):
    from ecomtl.model.bundle import read_spec
    from ecomtl.model.predictor import Preprocessor
    from ecomtl.serve.deployments import load_tokenizer

    pre = Preprocessor(load_tokenizer(tiny_bundle), read_spec(tiny_bundle))
    route = read_spec(tiny_bundle)["routes"]["rating"]
    good = [pre.features("reviews", [(f"text {i}", None)]) for i in range(7)]
    bad = pre.features("reviews", [("text", None)])
    bad.input_ids = [[bad.input_ids[0][0], 10 ** 8, bad.input_ids[0][-1]]]  # no such token
    if bad.token_type_ids is not None:
        bad.token_type_ids = [[0, 0, 0]]
    out = outcomes("encoder", lambda encoder: [encoder.remote(f, route, False) for f in good + [bad]])
    assert not any(isinstance(o, Exception) for o in out[:7]), out
    assert isinstance(out[7], Exception)
