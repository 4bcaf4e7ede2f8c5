"""The HTTP API end to end: real Serve on the local Ray, real HTTP on loopback."""

from __future__ import annotations

import math

import pytest
import requests

pytestmark = pytest.mark.integration

REVIEWS = ["Lovely soft dress, fits true to size", "Runs small and the fabric is thin"]
QUERY = "red  nike running shoes size 10"
PAIR = {"text": "Sony Bravia 55in 4K TV black", "text_pair": "Sony KD-55X80K 55 inch television"}


def post(base, path, body=None, **kw):
    return requests.post(base + path, json=body, timeout=60, **kw)


def close(a, b, tol=1e-4) -> bool:
    """Equal JSON up to float noise (HTTP batches pad rows to a different width)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


@pytest.fixture(scope="module")
def local(tiny_bundle):
    from ecomtl.model.predictor import Predictor

    return Predictor.from_bundle(tiny_bundle)


def test_tasks_health_openapi(served):
    r = requests.get(served + "/v1/tasks", timeout=30)
    assert r.status_code == 200
    tasks = {t["name"]: t for t in r.json()["tasks"]}
    assert set(tasks) == {"rating", "stars", "attributes", "match", "twins"}
    assert tasks["twins"]["input_fields"] == ["query", "candidates"]
    assert tasks["match"]["input_fields"] == ["text", "text_pair"] and tasks["rating"]["labels"] == ["1", "2", "3", "4", "5"]
    assert requests.get(served + "/healthz", timeout=30).json()["status"] == "ok"
    paths = requests.get(served + "/openapi.json", timeout=30).json()["paths"]
    assert {"/v1/tasks", "/v1/tasks/rating", "/v1/tasks/match", "/v1/predict", "/healthz", "/readyz"} <= set(paths)


def test_bundle_version_everywhere_and_readiness(served, tiny_bundle):
    from ecomtl.model.bundle import bundle_version

    version = bundle_version(tiny_bundle)
    assert requests.get(served + "/v1/tasks", timeout=30).json()["bundle_version"] == version
    ready = requests.get(served + "/readyz", timeout=60)
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "bundle_version": version}
    for r in (ready, post(served, "/v1/tasks/rating", {"inputs": "ok"}), post(served, "/v1/tasks/rating", {}),
              requests.get(served + "/nowhere", timeout=30)):
        assert r.headers["x-bundle-version"] == version, (r.status_code, r.headers)


@pytest.mark.parametrize("task,inputs", [
    ("rating", REVIEWS), ("rating", REVIEWS[0]), ("stars", REVIEWS), ("attributes", [QUERY, "blue jeans"]),
    ("match", [PAIR]), ("match", PAIR),
])
def test_task_route_equals_in_process(served, local, task, inputs):
    r = post(served, f"/v1/tasks/{task}", {"inputs": inputs})
    assert r.status_code == 200, r.text
    assert r.json()["task"] == task
    assert close(r.json()["predictions"], local.predict([task], inputs)[task])


def test_shapes(served):
    preds = post(served, "/v1/tasks/attributes", {"inputs": QUERY}).json()["predictions"]
    for span in preds[0]["attributes"]:
        assert QUERY[span["start"]:span["end"]] == span["text"] and span["type"]
    m = post(served, "/v1/tasks/match", {"inputs": PAIR}).json()["predictions"][0]
    assert 0 <= m["match_probability"] <= 1
    s = post(served, "/v1/tasks/stars", {"inputs": "ok"}).json()["predictions"][0]
    assert isinstance(s["value"], float)


def test_predict_several_tasks_equals_in_process(served, local):
    tasks = ["rating", "stars", "attributes"]
    r = post(served, "/v1/predict", {"tasks": tasks, "inputs": REVIEWS})
    assert r.status_code == 200, r.text
    assert close(r.json()["predictions"], local.predict(tasks, REVIEWS))


def test_long_text_is_truncated_and_said(served, local):
    text = "great dress " * 150  # 1,800 characters: under the app's 2,000, far beyond 64 tokens
    pred = post(served, "/v1/tasks/rating", {"inputs": text}).json()["predictions"][0]
    assert pred["truncated"] is True
    assert close(pred, local.predict(["rating"], text)["rating"][0])


def test_mixed_task_traffic_under_concurrency(served):
    """8 clients, every task and both routes, token and text tasks in either order in one
    /v1/predict: every answer a 200 (the shared encoder must never merge unlike inputs)."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [("/v1/predict", {"tasks": ["attributes", "rating", "stars"], "inputs": [QUERY, REVIEWS[0]]}),
              ("/v1/predict", {"tasks": ["rating", "attributes"], "inputs": REVIEWS[1]}),
              ("/v1/predict", {"tasks": ["match"], "inputs": [PAIR, PAIR]}),
              ("/v1/tasks/attributes", {"inputs": QUERY}), ("/v1/tasks/match", {"inputs": PAIR}),
              ("/v1/tasks/stars", {"inputs": REVIEWS}), ("/v1/tasks/rating", {"inputs": REVIEWS[0]})]
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda i: post(served, *bodies[i % len(bodies)]), range(56)))
    assert [r.status_code for r in rs] == [200] * 56, [r.text[:200] for r in rs if r.status_code != 200]
