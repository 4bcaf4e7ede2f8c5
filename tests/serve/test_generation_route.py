"""The generation route over real Serve and HTTP: text and its log-probability back,
``max_new_tokens`` bounded by the bundle, decoding batched in its own deployment while
the other tasks keep answering."""

from __future__ import annotations

import pytest

from tests.serve.test_http import close, post

pytestmark = pytest.mark.integration
TITLES = ["AW Bellies", "Puma men running shoes black size 9", "Samsung Galaxy M31 back cover"]


@pytest.fixture(scope="module")
def decoder_bundle(tmp_path_factory, data_root, decoder_tokenizer_dir) -> str:
    from tests.tasks.test_generation import gen_cfg

    from ecomtl.model.predictor import untrained_bundle

    cfg = gen_cfg(data_root, decoder_tokenizer_dir, tmp_path_factory.mktemp("runs"))
    return str(untrained_bundle(cfg, tmp_path_factory.mktemp("bundle") / "gen"))


@pytest.fixture(scope="module")
def gen_app(deploy, decoder_bundle, app_args):
    with deploy(app_args(decoder_bundle), "gen", "/gen") as url:
        yield url


def test_generates_the_in_process_text_within_the_budget(gen_app, decoder_bundle):
    from ecomtl.model.predictor import Predictor

    r = post(gen_app, "/v1/tasks/path", {"inputs": TITLES, "max_new_tokens": 5})
    assert r.status_code == 200, r.text
    made = r.json()["predictions"]
    assert len(made) == 3
    for m in made:
        assert isinstance(m["text"], str) and 1 <= m["tokens"] <= 5 and m["logprob_sum"] <= 0
        assert set(m) == {"text", "tokens", "logprob_sum", "stopped", "truncated"}
    local = Predictor.from_bundle(decoder_bundle).predict(["path"], TITLES, max_new_tokens=5)["path"]
    assert close(made, local, tol=1e-3)
    # without a budget: the bundle's own (24 tokens in the test config), never more
    full = post(gen_app, "/v1/tasks/path", {"inputs": TITLES[0]}).json()["predictions"][0]
    assert full["tokens"] <= 24
    # /v1/predict mixes it with a classifier on another source of the same text
    both = post(gen_app, "/v1/predict", {"tasks": ["path", "category"], "inputs": TITLES[:2]})
    assert both.status_code == 200, both.text
    assert len(both.json()["predictions"]["path"]) == 2 and "label" in both.json()["predictions"]["category"][0]


@pytest.mark.parametrize("body,status,code", [
    ({"inputs": "AW Bellies", "max_new_tokens": 25}, 422, "invalid_request"),  # over the bundle's 24
    ({"inputs": "AW Bellies", "max_new_tokens": 0}, 422, "invalid_request"),
    ({"inputs": "AW Bellies", "max_new_tokens": "many"}, 422, "invalid_request"),
    ({"inputs": ""}, 422, "empty_text"),
    ({"inputs": [{"text": "a", "text_pair": "b"}]}, 422, "pair_not_accepted"),
    ({"inputs": ["ok"] * 9}, 413, "too_many_items"),
    ({"inputs": "ok", "temperature": 2}, 422, "invalid_request"),
])
def test_bad_requests_are_refused(gen_app, body, status, code):
    r = post(gen_app, "/v1/tasks/path", body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code, r.text


def test_other_tasks_answer_while_decoding(gen_app):
    """Slow decodes in flight do not hold up the classifier (its own deployment and the
    shared encoder): every call answers 200."""
    from concurrent.futures import ThreadPoolExecutor

    bodies = [("/v1/tasks/path", {"inputs": TITLES}), ("/v1/tasks/category", {"inputs": TITLES[1]})] * 6
    with ThreadPoolExecutor(6) as pool:
        rs = list(pool.map(lambda b: post(gen_app, *b), bodies))
    assert [r.status_code for r in rs] == [200] * len(bodies), [r.text[:200] for r in rs if r.status_code != 200]
