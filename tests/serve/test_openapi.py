"""The OpenAPI page tells the truth: task names as an enum, the limits declared, every
error status documented; and schemathesis (a public OpenAPI fuzzer) finds no failure
against the live app: no 5xx, statuses and bodies as documented, bad data refused."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import requests

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def openapi(served) -> dict:
    return requests.get(served + "/openapi.json", timeout=30).json()


def resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        node = spec["components"]["schemas"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def test_task_names_are_in_the_schema(openapi, served):
    """Each task is its own operation (its input shape in its schema); /v1/predict names
    them as enums, one branch per input shape."""
    tasks = requests.get(served + "/v1/tasks", timeout=30).json()["tasks"]
    assert {f"/v1/tasks/{t['name']}" for t in tasks} <= set(openapi["paths"])
    assert "/v1/tasks/{task}" not in openapi["paths"]
    body = openapi["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    enums = {}
    for branch in body["oneOf"]:
        prop = resolve(openapi, branch)["properties"]["tasks"]
        enums[tuple(resolve(openapi, prop["items"])["enum"])] = prop["maxItems"]
    assert sorted(n for names in enums for n in names) == sorted(t["name"] for t in tasks)
    pairs = tuple(t["name"] for t in tasks if t["input"] == "pair")
    assert enums[pairs] == len(pairs)


def inputs_of(openapi: dict, task: str) -> list[dict]:
    op = openapi["paths"][f"/v1/tasks/{task}"]["post"]
    model = resolve(openapi, op["requestBody"]["content"]["application/json"]["schema"])
    return model["properties"]["inputs"]["anyOf"]


def test_limits_and_input_shapes_are_declared(openapi):
    """The app's limits (max_items 8, max_text_chars 2000 in the test args), non-blank
    texts; a pair task takes only pairs, a single-text task no pair."""
    branches = inputs_of(openapi, "rating")
    text = next(b for b in branches if b.get("type") == "string")
    assert (text["minLength"], text["maxLength"], text["pattern"]) == (1, 2000, r"\S")
    listed = next(b for b in branches if b.get("type") == "array")
    assert (listed["minItems"], listed["maxItems"]) == (1, 8)
    single = resolve(openapi, next(b for b in branches if "$ref" in b))
    assert set(single["properties"]) == {"text"} and single["additionalProperties"] is False
    pair_branches = inputs_of(openapi, "match")
    assert not any(b.get("type") == "string" for b in pair_branches)
    pair = resolve(openapi, next(b for b in pair_branches if "$ref" in b))
    assert pair["required"] == ["text", "text_pair"] and pair["properties"]["text_pair"]["maxLength"] == 2000


def test_error_statuses_are_documented_with_the_error_shape(openapi):
    for path in ("/v1/tasks/rating", "/v1/tasks/match", "/v1/predict"):
        responses = openapi["paths"][path]["post"]["responses"]
        assert {"400", "401", "404", "413", "422", "503", "504"} <= set(responses)
        assert responses["422"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


# 413 is this API's answer to over-long texts and too many inputs (a documented status);
# schemathesis' default list of "rejections" lacks it.
SCHEMATHESIS_CONFIG = """
[checks.negative_data_rejection]
expected-statuses = [400, 401, 403, 404, 405, 406, 409, 413, 415, 422, 428, 429]
"""


@pytest.mark.skipif(shutil.which("schemathesis") is None, reason="schemathesis not installed (pip install .[test])")
def test_schemathesis_finds_no_failure(served, tmp_path):
    """Every check, positive and negative data, 25 examples an operation: ~1 min on 2 CPUs."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    cmd = ["schemathesis", "--config-file", str(config), "run", served + "/openapi.json", "--checks", "all",
           "--max-examples", "25", "--generation-deterministic", "--request-timeout", "30"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path, env=dict(os.environ))
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout and "failure" not in run.stdout, run.stdout[-3000:]
