"""The ranking route over real Serve and HTTP: one query and its candidates in, the
candidates best first with the scores the in-process model gives, bad shapes refused."""

from __future__ import annotations

import pytest
import requests

from tests.serve.test_http import close, post

pytestmark = pytest.mark.integration

QUERY = "name: sony bravia 55in 4k tv black; price: 999"
CANDIDATES = ["name: sony kd-55x80k 55 inch television", "name: lg 24 dishwasher white",
              "name: sony 55 inch 4k ultra hd smart led tv", "name: speck clear case macbook air"]


def test_candidates_come_back_ranked_with_the_in_process_scores(served, tiny_bundle):
    from ecomtl.model.predictor import Predictor

    r = post(served, "/v1/tasks/twins", {"query": QUERY, "candidates": CANDIDATES})
    assert r.status_code == 200, r.text
    ranked = r.json()["predictions"]
    assert sorted(x["index"] for x in ranked) == list(range(len(CANDIDATES)))
    assert [x["candidate"] for x in ranked] == [CANDIDATES[x["index"]] for x in ranked]
    scores = [x["score"] for x in ranked]
    assert scores == sorted(scores, reverse=True)
    local = Predictor.from_bundle(tiny_bundle).predict(["twins"], [{"text": QUERY, "text_pair": c} for c in CANDIDATES])
    assert close([x["score"] for x in sorted(ranked, key=lambda x: x["index"])],
                 [p["score"] for p in local["twins"]])
    one = post(served, "/v1/tasks/twins", {"query": QUERY, "candidates": CANDIDATES[:1]})
    assert one.status_code == 200 and one.json()["predictions"][0]["index"] == 0


@pytest.mark.parametrize("body,status,code", [
    ({"query": QUERY}, 422, "invalid_request"),  # no candidates
    ({"query": QUERY, "candidates": []}, 422, "empty_inputs"),
    ({"query": QUERY, "candidates": ["ok"] * 9}, 413, "too_many_items"),  # the app's max_items is 8
    ({"query": "", "candidates": ["a"]}, 422, "empty_text"),
    ({"query": QUERY, "candidates": ["a", "   "]}, 422, "empty_text"),
    ({"query": "\ud800", "candidates": ["a"]}, 422, "invalid_text"),
    ({"query": QUERY, "candidates": "just one string"}, 422, "invalid_request"),
    ({"query": QUERY, "candidates": [{"text": "a"}]}, 422, "invalid_request"),
    ({"inputs": [{"text": QUERY, "text_pair": "a"}]}, 422, "invalid_request"),  # the pair body is not this route's
    ({"query": QUERY, "candidates": ["a"], "k": 3}, 422, "invalid_request"),
    ({"query": "x" * 2001, "candidates": ["a"]}, 413, "text_too_long"),
])
def test_bad_shapes_are_refused_with_json(served, body, status, code):
    r = post(served, "/v1/tasks/twins", body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text
