"""Bad input over real HTTP: a JSON error naming the problem with a 4xx, never a 5xx,
the request id in every error, and the service keeps answering."""

from __future__ import annotations

import json

import pytest
import requests

pytestmark = pytest.mark.integration

BIG = b"x" * 2001
NESTED = b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"


def raw(base, path, data: bytes, content_type="application/json", method="POST", headers=None):
    return requests.request(method, base + path, data=data, timeout=60,
                            headers={"Content-Type": content_type, **(headers or {})})


CASES = [
    # (path, body bytes, status, error code, words the message must contain)
    ("/v1/tasks/rating", b'{"inputs": ["ok",', 400, "malformed_json", ["not valid JSON"]),
    ("/v1/tasks/rating", b"", 422, "invalid_request", ["body"]),
    ("/v1/tasks/rating", b'{"inputs": "caf\xe9"}', 400, "invalid_utf8", ["not UTF-8"]),
    ("/v1/tasks/rating", NESTED, 400, "malformed_json", ["JSON"]),
    ("/v1/tasks/rating", b'{"inputs": 1' + b"0" * 5000 + b"}", 400, "malformed_json", ["JSON"]),
    ("/v1/tasks/rating", b"{}", 422, "invalid_request", ["inputs"]),
    ("/v1/tasks/rating", b"null", 422, "invalid_request", []),
    ("/v1/tasks/rating", b'{"inputs": 5}', 422, "invalid_request", ["inputs"]),
    ("/v1/tasks/rating", b'{"inputs": null}', 422, "invalid_request", ["inputs"]),
    ("/v1/tasks/rating", b'{"inputs": NaN}', 422, "invalid_request", ["inputs"]),
    ("/v1/tasks/rating", b'{"inputs": [["nested"]]}', 422, "invalid_request", ["inputs"]),
    ("/v1/tasks/rating", b'{"inputs": [{"txt": "x"}]}', 422, "invalid_request", ["txt"]),
    ("/v1/tasks/rating", b'{"inputs": [{"text": 3}]}', 422, "invalid_request", ["inputs"]),
    ("/v1/tasks/rating", b'{"inputs": "ok", "extra": 1}', 422, "invalid_request", ["extra"]),
    ("/v1/tasks/rating", b'[1, 2]', 422, "invalid_request", []),
    ("/v1/tasks/rating", b'{"inputs": "   "}', 422, "empty_text", ["inputs", "empty"]),
    ("/v1/tasks/rating", b'{"inputs": ""}', 422, "empty_text", ["inputs", "empty"]),
    ("/v1/tasks/rating", b'{"inputs": ["ok", "\\u2003\\n"]}', 422, "empty_text", ["inputs[1]"]),
    ("/v1/tasks/rating", b'{"inputs": []}', 422, "empty_inputs", ["empty"]),
    # text the tokenizer cannot encode: a lone surrogate, alone, in a list, in a pair
    ("/v1/tasks/rating", b'{"inputs": "\\ud800"}', 422, "invalid_text", ["Unicode"]),
    ("/v1/tasks/attributes", b'{"inputs": ["fine", "x\\udfff"]}', 422, "invalid_text", ["inputs[1]"]),
    ("/v1/tasks/match", b'{"inputs": {"text": "a", "text_pair": "\\ud83d"}}', 422, "invalid_text", ["text_pair"]),
    ("/v1/predict", b'{"tasks": ["rating"], "inputs": "\\udc00 hi"}', 422, "invalid_text", ["Unicode"]),
    ("/v1/tasks/nope", b'{"inputs": "ok"}', 404, "unknown_task", ["nope", "rating", "match"]),
    ("/v1/tasks/rating", b'{"inputs": {"text": "a", "text_pair": "b"}}', 422, "pair_not_accepted", ["rating"]),
    ("/v1/tasks/match", b'{"inputs": "just one offer"}', 422, "pair_required", ["match", "text_pair"]),
    ("/v1/tasks/match", b'{"inputs": {"text": "a", "text_pair": ""}}', 422, "empty_text", ["text_pair"]),
    ("/v1/tasks/rating", b'{"inputs": ["a","b","c","d","e","f","g","h","i"]}', 413, "too_many_items", ["9", "8"]),
    ("/v1/tasks/rating", b'{"inputs": [' + b"1," * 100_000 + b'1]}', 413, "too_many_items", ["100001", "8"]),
    ("/v1/tasks/rating", b'{"inputs": "' + BIG + b'"}', 413, "text_too_long", ["2001", "2000"]),
    ("/v1/tasks/match", b'{"inputs": [{"text": "a", "text_pair": "' + BIG + b'"}]}', 413, "text_too_long", ["2001"]),
    ("/v1/predict", b'{"tasks": [], "inputs": "ok"}', 422, "invalid_request", ["tasks"]),
    ("/v1/predict", b'{"tasks": "rating", "inputs": "ok"}', 422, "invalid_request", ["tasks"]),
    ("/v1/predict", b'{"tasks": ["rating", "nope"], "inputs": "ok"}', 404, "unknown_task", ["nope"]),
    ("/v1/predict", b'{"tasks": ["rating", "match"], "inputs": "ok"}', 422, "pair_required", ["match"]),
    ("/v1/predict", b'{"tasks": ' + json.dumps(["rating"] * 50).encode() + b', "inputs": "ok"}', 422, "invalid_request",
     ["50 tasks"]),
    ("/v1/predict", b'{"inputs": "ok"}', 422, "invalid_request", ["tasks"]),
    ("/v1/tasks/rating", b'{"inputs": "' + b"y" * 300_000 + b'"}', 413, "body_too_large", ["bytes"]),
]


def assert_json_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json"), r.headers
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["request_id"] and "Traceback" not in r.text and "/site-packages/" not in r.text
    assert r.headers.get("x-bundle-version"), r.headers
    return err


@pytest.mark.parametrize("path,body,status,code,words", CASES, ids=[f"{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_gets_json_4xx_and_service_stays_up(served, path, body, status, code, words):
    err = assert_json_error(raw(served, path, body), status, code)
    for w in words:
        assert w in err["message"], err
    ok = requests.post(served + "/v1/tasks/rating", json={"inputs": "lovely"}, timeout=60)
    assert ok.status_code == 200, ok.text


def test_error_details_are_bounded(served):
    """Many errors in one request: the first 20 and a count; 20,000 unknown keys: one error."""
    items = b",".join([b'{"text": 1}'] * 8)
    r = raw(served, "/v1/predict", b'{"tasks": [1, 2, 3], "inputs": [' + items + b']}')
    err = assert_json_error(r, 422, "invalid_request")
    assert len(err["details"]) == 20 and err["more_details"] > 0 and len(r.content) < 10_000
    many = b'{"inputs": "ok", ' + b", ".join(b'"k%d": 1' % i for i in range(20_000)) + b"}"
    r = raw(served, "/v1/tasks/rating", many)
    err = assert_json_error(r, 422, "invalid_request")
    assert "and 19995 more" in err["message"] and len(r.content) < 5_000


def test_body_limit_also_without_content_length(served):
    def chunks():
        yield b'{"inputs": "'
        for _ in range(40):
            yield b"z" * 10_000
        yield b'"}'

    r = requests.post(served + "/v1/tasks/rating", data=chunks(), headers={"Content-Type": "application/json"},
                      timeout=60)
    assert_json_error(r, 413, "body_too_large")


def test_wrong_method_and_route_are_json(served):
    r = requests.get(served + "/v1/tasks/rating", timeout=30)
    assert_json_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
    r = requests.delete(served + "/v1/tasks", timeout=30)
    assert_json_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "GET"
    r = requests.get(served + "/v2/nothing", timeout=30)
    assert_json_error(r, 404, "not_found")


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", "text/plain", "multipart/form-data"])
def test_non_json_body_is_refused_cleanly(served, content_type):
    r = raw(served, "/v1/tasks/rating", b"inputs=ok", content_type=content_type)
    assert 400 <= r.status_code < 500 and "error" in r.json()


def test_ray_proxy_header_decoding_is_outside_the_app(served):
    """Ray 2.60's proxy decodes X-Request-Id and x-request-timeout-seconds as UTF-8 before
    the app sees the request (proxy.py / http_util.parse_request_timeout_header): bytes
    that are not UTF-8 there give its own plain-text 500, which no app setting reaches.
    What the app controls: header bytes it reads itself (API key) never fail."""
    r = requests.post(served + "/v1/tasks/rating", json={"inputs": "ok"}, headers={"X-API-Key": b"\xff\xfe"},
                      timeout=30)
    assert r.status_code == 200  # no auth configured here: the header is ignored, not decoded
    bad = requests.post(served + "/v1/tasks/rating", json={"inputs": "ok"},
                        headers={"x-request-timeout-seconds": b"\xff"}, timeout=30)
    if bad.status_code < 500:
        pytest.fail("Ray's proxy now handles undecodable timeout headers: drop this note and the README's")
