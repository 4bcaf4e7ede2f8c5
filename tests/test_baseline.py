"""The plain alternatives: BM25 ranks lexically closer candidates first, and the
baseline command scores a ranking task with it on real grouped offers."""

import pytest

from ecomtl.baseline import bm25_scores, ranking_pairs, tfidf_baseline


def test_bm25_prefers_the_candidate_sharing_the_querys_rare_words():
    pairs = [("sony bravia 55 inch tv", "sony kd-55x80k bravia television"),
             ("sony bravia 55 inch tv", "lg 24 inch dishwasher"),
             ("speck macbook air case", "speck seethru clear case for macbook air"),
             ("speck macbook air case", "sony bravia remote")]
    # a collection of more than a handful (in 4 documents, a word in 2 of them has IDF 0)
    others = [("x", f"{w} kitchen blender {i}") for i, w in enumerate(["oster", "ninja", "kitchenaid", "vitamix",
                                                                       "hamilton", "cuisinart", "breville", "braun"])]
    s = bm25_scores(pairs + others)[:4]
    assert s[0] > s[1] and s[2] > s[3] and s[1] >= 0
    gold = ranking_pairs(s, [1.0, 0.0, 1.0, None], ["a", "a", "b", "b"])
    assert [g for g, _ in gold] == [(0, 1.0), (0, 0.0), (1, 1.0)]  # the unlabelled row is left out


@pytest.mark.parametrize("rows", [300])
def test_baseline_scores_a_ranking_task_with_bm25(tiny_cfg, rows):
    from ecomtl.config.load import config_from_dict

    data = tiny_cfg.model_dump(mode="json")
    data["sources"] = {"offers": data["sources"]["offers"] | {"group": "left", "max_rows": rows}}
    data["tasks"] = {"twins": {"source": "offers", "head": "ranking", "label": "label"}}
    out = tfidf_baseline(config_from_dict(data))["twins"]
    assert out["groups"] > 20 and 0.5 < out["ndcg@10"] <= 1.0 and out["score"] == out["ndcg@10"]
