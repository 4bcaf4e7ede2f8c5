"""Bad input over real HTTP: a JSON error naming the problem with a 4xx, never a 500,
and the service keeps answering."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.integration

PAIR = {"text": "Sony Bravia 55in 4K TV", "text_pair": "Sony KD-55X80K television"}


def raw(base, path, data: bytes, content_type="application/json"):
    return requests.post(base + path, data=data, headers={"Content-Type": content_type}, timeout=60)


CASES = [
    # (path, body bytes, status, error code, words the message must contain)
    ("/v1/tasks/rating", b'{"inputs": ["ok",', 400, "malformed_json", ["not valid JSON"]),
    ("/v1/tasks/rating", b"", 422, "invalid_request", ["body"]),
    ("/v1/tasks/rating", b'{"inputs": "caf\xe9"}', 400, "invalid_utf8", ["not UTF-8"]),
    ("/v1/tasks/rating", b"{}", 422, "invalid_request", ["inputs"]),
    ("/v1/tasks/rating", b'{"inputs": 5}', 422, "invalid_request", ["inputs"]),
    ("/v1/tasks/rating", b'{"inputs": [{"txt": "x"}]}', 422, "invalid_request", ["inputs"]),
    ("/v1/tasks/rating", b'{"inputs": "ok", "extra": 1}', 422, "invalid_request", ["extra"]),
    ("/v1/tasks/rating", b'[1, 2]', 422, "invalid_request", []),
    ("/v1/tasks/rating", b'{"inputs": "   "}', 422, "empty_text", ["inputs[0].text", "empty"]),
    ("/v1/tasks/rating", b'{"inputs": []}', 422, "empty_inputs", ["empty"]),
    ("/v1/tasks/nope", b'{"inputs": "ok"}', 404, "unknown_task", ["nope", "rating", "match"]),
    ("/v1/tasks/rating", b'{"inputs": {"text": "a", "text_pair": "b"}}', 422, "pair_not_accepted", ["rating"]),
    ("/v1/tasks/match", b'{"inputs": "just one offer"}', 422, "pair_required", ["match", "text_pair"]),
    ("/v1/tasks/match", b'{"inputs": {"text": "a", "text_pair": ""}}', 422, "empty_text", ["text_pair"]),
    ("/v1/tasks/rating", b'{"inputs": ["a","b","c","d","e","f","g","h","i"]}', 413, "too_many_items", ["9", "8"]),
    ("/v1/tasks/rating", b'{"inputs": "' + b"x" * 2001 + b'"}', 413, "text_too_long", ["2001", "2000"]),
    ("/v1/predict", b'{"tasks": [], "inputs": "ok"}', 422, "invalid_request", ["tasks"]),
    ("/v1/predict", b'{"tasks": ["rating", "nope"], "inputs": "ok"}', 404, "unknown_task", ["nope"]),
    ("/v1/predict", b'{"tasks": ["rating", "match"], "inputs": "ok"}', 422, "pair_required", ["match"]),
    ("/v1/predict", b'{"inputs": "ok"}', 422, "invalid_request", ["tasks"]),
]


@pytest.mark.parametrize("path,body,status,code,words", CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_gets_json_4xx_and_service_stays_up(served, path, body, status, code, words):
    r = raw(served, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    for w in words:
        assert w in err["message"], err
    ok = requests.post(served + "/v1/tasks/rating", json={"inputs": "lovely"}, timeout=60)
    assert ok.status_code == 200, ok.text


def test_wrong_method_and_route_are_json(served):
    r = requests.get(served + "/v1/tasks/rating", timeout=30)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = requests.get(served + "/v2/nothing", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_form_body_is_refused_cleanly(served):
    r = raw(served, "/v1/tasks/rating", b"inputs=ok", content_type="application/x-www-form-urlencoded")
    assert 400 <= r.status_code < 500 and "error" in r.json()
