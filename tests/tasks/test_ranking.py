"""The ranking head: metrics and losses against hand-computed values, label policy,
group-aware batching, and a real 2-worker run that learns a fixed set of groups."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ecomtl.data.sampling import GroupedBatches
from ecomtl.tasks import TASK_HEADS

RANK = TASK_HEADS.get("ranking")
CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def pairs_of(groups):
    return [((g, rel), s) for g, (rels, scores) in groups.items() for rel, s in zip(rels, scores)]


def test_metrics_match_hand_computed_values():
    m = RANK.metrics(pairs_of({
        0: ([1, 0, 0], [0.2, 0.9, 0.1]),  # the match ranked 2nd
        1: ([0, 1], [0.1, 0.5]),  # ranked 1st
        2: ([1], [0.3]),  # one candidate: nothing to rank, left out
        3: ([0, 0], [0.1, 0.2]),  # no relevant candidate: left out
    }), {"max_relevance": 1.0})
    assert m["groups"] == 2 and m["groups_total"] == 4 and m["n"] == 8
    assert m["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1) / 2)
    assert m["ndcg@1"] == pytest.approx(0.5)
    assert m["recall@1"] == pytest.approx(0.5) and m["recall@5"] == 1.0
    assert m["score"] == m["ndcg@10"]
    assert RANK.metrics(pairs_of({0: ([1, 0], [0.2, 0.1])}), {}, "mrr")["score"] == 1.0


def test_graded_relevance_and_ties():
    # graded: gains 2^rel - 1 = 3, 1, 0; ranked [rel1, rel2, rel0]
    m = RANK.metrics(pairs_of({0: ([2, 1, 0], [0.5, 0.9, 0.1])}), {})
    dcg, idcg = 1 + 3 / math.log2(3), 3 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    # a constant scorer gets the chance level, not the order the rows came in
    tied = RANK.metrics(pairs_of({0: ([1, 0, 0], [0.0, 0.0, 0.0])}), {})
    assert tied["mrr"] == pytest.approx(1 / 2) and tied["recall@1"] == pytest.approx(1 / 3)
    assert RANK.metrics(pairs_of({0: ([0, 1, 0], [0.0, 0.0, 0.0])}), {})["mrr"] == pytest.approx(1 / 2)
    assert RANK.metrics([], {})["score"] == 0.0
    assert RANK.metrics(pairs_of({0: ([1], [0.1])}), {})["score"] == 0.0  # nothing rankable scores 0


def test_losses_match_hand_computed_values():
    info = RANK.fit_labels([0, 1, 0, "1", None])
    assert info == {"max_relevance": 1.0, "graded": False}
    scores = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, 5.0])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, -100.0])  # the last row unlabelled
    batch = {"group": torch.tensor([7, 7, 9, 9, 9, 9])}
    listwise = RANK(4, info, options={"loss": "listwise"}).loss(scores, labels, batch)
    assert listwise.item() == pytest.approx((math.log(2) + math.log(3)) / 2)  # mean over the 2 groups
    pairwise = RANK(4, info, options={"loss": "pairwise"}).loss(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0]),
                                                                 {"group": torch.tensor([0, 0])})
    assert pairwise.item() == pytest.approx(math.log1p(math.exp(-2.0)))
    pointwise = RANK(4, info, options={"loss": "pointwise"}).loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, -100.0]),
                                                                   {"group": torch.tensor([0, 0])})
    assert pointwise.item() == pytest.approx(math.log(2))
    # no relevant row: a zero that still touches the graph (every ZeRO rank runs backward)
    x = torch.zeros(2, requires_grad=True)
    zero = RANK(4, info).loss(x, torch.tensor([0.0, 0.0]), {"group": torch.tensor([0, 0])})
    zero.backward()
    assert zero.item() == 0.0 and x.grad is not None


def test_labels_are_relevance_numbers():
    with pytest.raises(ValueError, match="relevant rows"):
        RANK.fit_labels([0, 0, None])
    with pytest.raises(ValueError, match="relevance numbers"):
        RANK.fit_labels([1, "high"])
    info = RANK.fit_labels([0, 3])
    assert RANK.encode_label(-1, info) == (None, "unknown_label")
    assert RANK.encode_label("", info) == (None, "missing_label")
    assert RANK.encode_label("2", info) == (2.0, None)


def test_grouped_batches_keep_groups_whole_and_disjoint_across_ranks():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), rng.integers(1, 30, size=40))
    rng.shuffle(groups)
    relevant = rng.random(len(groups)) < 0.1
    shards = [GroupedBatches(groups, 3, r, 2, seed=5, max_group_size=8, priority=relevant) for r in range(2)]
    sizes = np.bincount(groups)
    for k in range(shards[0].per_epoch * 2):
        got = [s.groups_of(k) for s in shards]
        assert len(got[0]) == len(got[1]) == 3  # every rank the same number of groups per step
        assert not set(got[0]) & set(got[1])  # no group on two ranks in a step
        for shard, gids in zip(shards, got):
            rows = shard.batch(k)
            assert set(groups[rows]) == set(gids)
            for g in gids:
                mine = rows[groups[rows] == g]
                assert len(mine) == min(sizes[g], 8)
                # a capped group keeps its relevant rows (up to the cap)
                assert relevant[mine].sum() == min(relevant[groups == g].sum(), 8)
    # an epoch visits every group once across the ranks
    seen = np.concatenate([s.groups_of(k) for k in range(shards[0].per_epoch) for s in shards])
    assert len(seen) == len(set(seen)) == shards[0].per_epoch * 6


def test_config_needs_a_group_column(tiny_cfg):
    from ecomtl.config.load import config_from_dict

    data = tiny_cfg.model_dump(mode="json")
    data["tasks"]["twins"] = {"source": "offers", "head": "ranking", "label": "label"}
    with pytest.raises(ValueError, match=r"tasks.twins.source: .*sources.offers.group"):
        config_from_dict(data)
    data["sources"]["offers"]["group"] = "left"
    data["data"] = {"engine": "ray_data"}
    with pytest.raises(ValueError, match=r"sources.offers.group: grouped sources are batched in memory"):
        config_from_dict(data)


@pytest.mark.integration
def test_two_workers_learn_to_rank_a_fixed_set(ray_local, tmp_path, data_root):
    """Abt-Buy offers grouped by the left offer, a tiny random encoder, 2 workers under
    ZeRO-2: the listwise loss falls on a fixed set of groups, and validation reports
    the ranking metrics over its groups."""
    from ecomtl.config.load import config_from_dict, read_yaml
    from ecomtl.data.prepare import prepare_data
    from ecomtl.model.build import load_tokenizer
    from ecomtl.train.run import train_experiment

    data = read_yaml(CONFIGS / "tiny.yaml")
    data["sources"] = {"offers": data["sources"]["offers"] | {"max_rows": 120, "group": "left", "groups_per_batch": 4,
                                                              "max_group_size": 8}}
    data["tasks"] = {"twins": {"source": "offers", "head": "ranking", "label": "label", "metric": "mrr"},
                     "match": data["tasks"]["match"]}
    cfg = config_from_dict(data, [f"data_root={data_root}", f"output.storage_path={tmp_path}",
                                  "distributed.num_workers=2", "distributed.zero_stage=2", "training.steps=30",
                                  "training.eval_every=30", "training.log_every=5", "optim.lr=3e-3",
                                  "optim.head_lr=1e-2", "optim.grad_clip=5.0", "optim.warmup_ratio=0.0"])
    prepared = prepare_data(cfg, load_tokenizer(cfg.model), splits=("train",))
    offers = prepared.splits["train"]["offers"]
    assert offers.groups is not None and offers.report["groups"] == int(offers.groups.max()) + 1
    out = train_experiment(cfg, run_name="ranking-zero2", log=lambda *_: None)
    train = [h for h in out.history if h["kind"] == "train"]
    first, last = train[0]["train_loss/twins"], train[-1]["train_loss/twins"]
    assert last < 0.7 * first, f"listwise loss {first:.3f} → {last:.3f} on a fixed set of groups"
    assert out.metrics["twins"]["groups"] > 0 and 0.0 <= out.metrics["twins"]["mrr"] <= 1.0
