"""Rollout: the running app redeployed with a new bundle (``serve.run`` again, same app
name, new args: what ``serve deploy`` does with an edited YAML) while clients keep
sending requests. Nothing may fail, and once the rollout is done every answer carries
the new bundle's version."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
import requests

pytestmark = pytest.mark.integration

APP, PREFIX = "rollout-test", "/r"
CLIENTS = 3
PAUSE_S = 0.05  # between a client's requests: load, but CPU left on 2 cores for the new replicas to start
BODIES = [("/v1/tasks/rating", {"inputs": "Lovely soft dress"}),
          ("/v1/predict", {"tasks": ["rating", "attributes"], "inputs": ["red shoes"]}),
          ("/v1/tasks/match", {"inputs": {"text": "Sony TV 55in", "text_pair": "Sony 55 inch television"}})]


@pytest.fixture
def new_bundle(tiny_bundle, tmp_path) -> str:
    """Another complete bundle (its own contents, so its own manifest hash): the tiny one
    with a changed metrics.json, its manifest rewritten by the bundle code itself."""
    from ecomtl.model.bundle import write_manifest

    out = tmp_path / "tiny-v2"
    shutil.copytree(tiny_bundle, out)
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({**metrics, "rollout_test": 2}))
    write_manifest(out)
    return str(out)


class Load:
    """CLIENTS threads in a loop over BODIES; each answer kept as (sent, received,
    status, X-Bundle-Version)."""

    def __init__(self, base: str):
        self.base, self.stop, self.answers = base, threading.Event(), []
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def run(self, i: int) -> None:
        n = i
        while not self.stop.is_set():
            path, body = BODIES[n % len(BODIES)]
            n += 1
            sent = time.time()
            try:
                r = requests.post(self.base + path, json=body, timeout=60)
                self.answers.append((sent, time.time(), r.status_code, r.headers.get("x-bundle-version")))
            except requests.RequestException as err:  # a dropped connection is a failed request too
                self.answers.append((sent, time.time(), type(err).__name__, None))
            time.sleep(PAUSE_S)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(90)


@pytest.mark.slow  # ~2 min (a second bundle is trained, then a redeploy under load); -m slow
def test_redeploy_with_a_new_bundle_under_load(serve_http, tiny_bundle, new_bundle, app_args):
    from ray import serve

    from ecomtl.model.bundle import bundle_version
    from ecomtl.serve.app import build_app

    old, new = bundle_version(tiny_bundle), bundle_version(new_bundle)
    assert old != new
    serve.run(build_app(app_args(tiny_bundle)), name=APP, route_prefix=PREFIX)
    try:
        with Load(serve_http + PREFIX) as load:
            time.sleep(2)
            t0 = time.time()
            serve.run(build_app(app_args(new_bundle)), name=APP, route_prefix=PREFIX)  # returns once it is RUNNING
            t_done = time.time()
            time.sleep(2)
        answers = load.answers
    finally:
        serve.delete(APP)
    after = [a for a in answers if a[0] > t_done]
    print(f"\nrollout: {t_done - t0:.1f} s, {len(answers)} requests, {sum(a[2] == 200 for a in answers)} "
          f"answered 200; after it {len(after)}, versions {sorted({str(a[3]) for a in after})}")

    failed = [a for a in answers if a[2] != 200]
    assert not failed, failed[:10]
    assert {a[3] for a in answers if a[1] < t0} == {old}
    assert len(after) >= CLIENTS and {a[3] for a in after} == {new}, [a for a in after if a[3] != new][:10]
