"""Serving metrics end to end: real requests, good and bad, to an app of its own on the
session's local Ray, then that Ray's own Prometheus endpoint (the node's metrics agent,
what a Prometheus server scrapes), read until the app's series show every request.

The app has its own name, so every series tagged with it comes from this test: the
expected counts are exact, not deltas."""

from __future__ import annotations

import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

APP = "metrics-test"
TASK_PATH = "/v1/tasks/{task}"
LONG = "great dress " * 150  # 1,800 characters: under the app's limit, far beyond the tiny bundle's 64 tokens


def scrape(ray) -> list:
    """Every sample of this app on the node's metrics export port."""
    text = []
    for node in ray.nodes():
        if node["Alive"]:
            r = requests.get(f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics", timeout=30)
            r.raise_for_status()
            text.append(r.text)
    return [s for fam in text_string_to_metric_families("\n".join(text)) for s in fam.samples
            if s.labels.get("application") == APP]


def value(samples, name: str, **labels) -> float:
    """The sum over the series of ``name`` whose labels include ``labels``."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def all_reported(samples) -> bool:
    """Each replica process reports on its own clock: wait for the last of them."""
    return (value(samples, "ray_ecomtl_requests_total") >= 9 and value(samples, "ray_ecomtl_errors_total") >= 3
            and value(samples, "ray_ecomtl_truncated_texts_total") >= 1
            and value(samples, "ray_ecomtl_batch_rows_count", stage="head", task="rating") >= 3
            and value(samples, "ray_ecomtl_batch_rows_count", stage="encoder") >= 4)


def bucket(samples, name: str, upper: float, **labels) -> float:
    """Observations at most ``upper`` (a cumulative ``_bucket`` series)."""
    return sum(s.value for s in samples if s.name == name + "_bucket" and labels.items() <= s.labels.items()
               and float(s.labels["le"]) == upper)


@pytest.fixture(scope="module")
def traffic(deploy, tiny_bundle, app_args, ray_local):
    """(what the client got, the app's samples once its metrics show all of it)."""
    with deploy(app_args(tiny_bundle), APP, "/m") as base:
        post = lambda path, **kw: requests.post(base + path, timeout=60, **kw)  # noqa: E731
        got = [post("/v1/tasks/rating", json={"inputs": "Lovely soft dress"}),
               post("/v1/tasks/rating", json={"inputs": ["Runs small"]}),
               post("/v1/tasks/rating", json={"inputs": LONG}),  # truncated
               post("/v1/predict", json={"tasks": ["rating", "attributes"], "inputs": ["red shoes", "blue jeans"]}),
               post("/v1/tasks/rating", json={"inputs": "  "}),  # 422 empty_text
               post("/v1/tasks/nope", json={"inputs": "x"}),  # 404 unknown_task: not a task label
               post("/v1/predict", data=b"{not json", headers={"content-type": "application/json"}),  # 400
               requests.get(base + "/healthz", timeout=30)]
        # Ray's workers report metrics to the agent every few seconds (10 s by default)
        deadline = time.time() + 90
        while True:
            samples = scrape(ray_local)
            if all_reported(samples) or time.time() > deadline:
                break
            time.sleep(2)
        yield got, samples


def test_the_client_saw_what_the_metrics_should_count(traffic):
    got, _ = traffic
    assert [r.status_code for r in got] == [200, 200, 200, 200, 422, 404, 400, 200]
    assert [r.json()["error"]["code"] for r in got[4:7]] == ["empty_text", "unknown_task", "malformed_json"]
    assert got[2].json()["predictions"][0]["truncated"] is True


def test_requests_by_task_path_and_status(traffic):
    _, s = traffic
    req = "ray_ecomtl_requests_total"
    assert value(s, req, task="rating", path=TASK_PATH, status="200", deployment="ingress") == 3
    assert value(s, req, task="rating", path="/v1/predict", status="200") == 1
    assert value(s, req, task="attributes", path="/v1/predict", status="200") == 1
    assert value(s, req, task="rating", path=TASK_PATH, status="422") == 1
    assert value(s, req, task="none", path=TASK_PATH, status="404") == 1
    assert value(s, req, task="none", path="/v1/predict", status="400") == 1
    assert value(s, req, task="none", path="/healthz", status="200") == 1
    assert value(s, req) == 9  # a /v1/predict counts once per task it names
    # the path a client made up never becomes a label value
    assert not [x for x in s if "nope" in x.labels.values()]


def test_errors_by_code(traffic):
    _, s = traffic
    err = "ray_ecomtl_errors_total"
    assert value(s, err, task="rating", status="422", code="empty_text") == 1
    assert value(s, err, task="none", status="404", code="unknown_task") == 1
    assert value(s, err, task="none", path="/v1/predict", status="400", code="malformed_json") == 1
    assert value(s, err) == 3  # answers that succeeded are not errors


def test_latency_histograms(traffic):
    _, s = traffic
    lat = "ray_ecomtl_request_latency_ms"
    assert value(s, lat + "_count", task="rating", path=TASK_PATH) == 4
    assert value(s, lat + "_count", task="attributes", path="/v1/predict") == 1
    assert value(s, lat + "_sum", task="rating", path=TASK_PATH) > 0
    # cumulative buckets: the +Inf bucket holds every observation
    assert bucket(s, lat, float("inf"), task="rating", path=TASK_PATH) == 4


def test_batch_rows_truncations_and_in_flight(traffic):
    _, s = traffic
    # (Ray exports a histogram's _sum estimated from bucket midpoints: counts and buckets are exact)
    rows = "ray_ecomtl_batch_rows"
    # the three good task-route requests, sent one after another: three batches of one text
    assert value(s, rows + "_count", stage="head", task="rating") == 3
    assert bucket(s, rows, 1, stage="head", task="rating") == 3
    # the encoder: those three single texts alone, then the /v1/predict's calls (two texts per
    # source; both sources' calls may share one pass)
    n = value(s, rows + "_count", stage="encoder")
    assert n >= 4 and bucket(s, rows, 1, stage="encoder") == 3 and bucket(s, rows, 4, stage="encoder") == n
    assert value(s, "ray_ecomtl_truncated_texts_total", task="rating") == 1
    assert value(s, "ray_ecomtl_truncated_texts_total") == 1
    gauge = [x for x in s if x.name == "ray_ecomtl_in_flight_requests"]
    assert gauge and all(x.value == 0 for x in gauge)  # every request has been answered
