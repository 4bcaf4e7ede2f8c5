import json
from collections import Counter

import numpy as np
import pytest

from ecomtl.data.sampling import SAMPLERS, ShardedBatches, build_sampler

SIZES = {"big": 9000, "mid": 900, "small": 100}


def freq(kind, temperature=1.0, n=20000):
    s = build_sampler(kind, SIZES, seed=3, temperature=temperature)
    c = Counter(s.source_at(i) for i in range(n))
    return {k: c[k] / n for k in SIZES}


def test_proportional_follows_sizes():
    f = freq("proportional")
    assert f["big"] == pytest.approx(0.9, abs=0.01) and f["small"] == pytest.approx(0.01, abs=0.005)


def test_temperature_flattens():
    p = build_sampler("temperature", SIZES, 0, 2.0).probabilities()
    expected = np.sqrt([9000, 900, 100]) / np.sqrt([9000, 900, 100]).sum()
    assert list(p.values()) == pytest.approx(expected.tolist())
    assert freq("temperature", 2.0)["small"] == pytest.approx(expected[2], abs=0.01)
    assert freq("temperature", 1000.0)["small"] == pytest.approx(1 / 3, abs=0.02)


def test_round_robin_cycles():
    s = build_sampler("round_robin", SIZES, 0, 1.0)
    assert [s.source_at(i) for i in range(6)] == ["big", "mid", "small"] * 2


def test_same_sequence_on_every_rank_and_after_resume():
    a = build_sampler("temperature", SIZES, 7, 2.0)
    b = build_sampler("temperature", SIZES, 7, 2.0)
    seq_a = [a.source_at(i) for i in range(10000)]
    assert [b.source_at(i) for i in range(5000, 10000)] == seq_a[5000:]  # resumed mid-way
    assert seq_a != [build_sampler("temperature", SIZES, 8, 2.0).source_at(i) for i in range(10000)]


def test_unknown_sampler_lists_known():
    with pytest.raises(KeyError, match="proportional"):
        SAMPLERS.get("zipf")


@pytest.mark.parametrize("lengths", [None, np.random.default_rng(0).integers(5, 100, 103)])
def test_sharded_batches_partition_each_epoch(lengths):
    n, bs, world = 103, 4, 2
    shards = [ShardedBatches(n, bs, r, world, seed=1, lengths=lengths, window=3) for r in range(world)]
    per_epoch = shards[0].per_epoch
    assert per_epoch == n // (bs * world)
    for epoch in range(2):
        seen = np.concatenate([s.batch(epoch * per_epoch + k) for s in shards for k in range(per_epoch)])
        assert len(seen) == len(set(seen.tolist())) == per_epoch * bs * world  # no row twice per epoch
    assert not np.array_equal(shards[0].batch(0), shards[0].batch(per_epoch))


def test_length_grouping_reduces_padding():
    lengths = np.random.default_rng(0).integers(5, 200, 2000)
    plain = ShardedBatches(2000, 16, 0, 1, seed=0)
    grouped = ShardedBatches(2000, 16, 0, 1, seed=0, lengths=lengths)
    pad = lambda sb: sum(lengths[sb.batch(k)].max() * 16 - lengths[sb.batch(k)].sum() for k in range(100))  # noqa: E731
    assert pad(grouped) < 0.3 * pad(plain)


def test_tiny_source_wraps():
    sb = ShardedBatches(3, 4, 0, 2, seed=0)
    assert len(sb.batch(0)) == 4


def test_source_weights_multiply_and_renormalise():
    p = build_sampler("proportional", {"a": 100, "b": 100}, 0, 1.0, weights={"a": 3.0}).probabilities()
    assert p == pytest.approx({"a": 0.75, "b": 0.25})


@pytest.mark.parametrize("kind", ["temperature", "round_robin", "metric"])
def test_several_sources_per_step_are_distinct_and_the_same_on_every_rank(kind):
    a, b = (build_sampler(kind, SIZES, 5, 2.0) for _ in range(2))
    draws = [a.sources_at(i, 2) for i in range(3000)]
    assert all(len(set(d)) == 2 for d in draws)
    assert draws == [b.sources_at(i, 2) for i in range(3000)]
    assert all(a.sources_at(i, 3) == list(SIZES) for i in range(10))  # k = every source: all of them
    assert [a.sources_at(i, 1) for i in range(50)] == [[a.source_at(i)] for i in range(50)]
    if kind != "round_robin":  # without replacement by the probabilities: "small" is rarest
        c = Counter(s for d in draws for s in d)
        assert c["big"] > c["mid"] > c["small"] > 0


def test_round_robin_pairs_cover_every_source_in_turn():
    s = build_sampler("round_robin", SIZES, 0, 1.0)
    assert [s.sources_at(i, 2) for i in range(3)] == [["big", "mid"], ["small", "big"], ["mid", "small"]]


def test_metric_sampler_gives_lagging_sources_more_steps_and_resumes_exactly():
    s = build_sampler("metric", SIZES, 11, 2.0, options={"power": 2.0, "min_share": 0.1})
    base = s.probabilities()
    before = [s.source_at(i) for i in range(1000)]
    s.observe({"big": 0.9, "mid": 0.9, "small": 0.2}, micro=1000)
    p = s.probabilities_at(1000)
    # hand-computed: base × (1 - score + 0.05)², floored at 0.1 × base, renormalised
    raw = {k: max(base[k] * (1 - v + 0.05) ** 2, 0.1 * base[k])
           for k, v in {"big": 0.9, "mid": 0.9, "small": 0.2}.items()}
    assert p == pytest.approx({k: v / sum(raw.values()) for k, v in raw.items()})
    assert p["small"] > 3 * base["small"] and s.probabilities_at(999) == base
    assert [s.source_at(i) for i in range(1000)] == before  # the past is not redrawn
    after = [s.source_at(i) for i in range(1000, 6000)]
    assert after.count("small") / 5000 == pytest.approx(p["small"], abs=0.02)
    # a resumed run (a fresh sampler + the checkpointed state) draws the same
    resumed = build_sampler("metric", SIZES, 11, 2.0, options={"power": 2.0, "min_share": 0.1})
    resumed.load_state_dict(json.loads(json.dumps(s.state_dict())))  # as trainer_state.json holds it
    assert [resumed.source_at(i) for i in range(1000, 6000)] == after


def test_metric_sampler_floor_keeps_every_source():
    s = build_sampler("metric", SIZES, 0, 1.0, options={"power": 10.0, "min_share": 0.5})
    s.observe({"big": 0.0, "mid": 1.0, "small": 1.0}, micro=0)
    base, p = s.probabilities(), s.probabilities_at(0)
    assert min(p[k] / base[k] for k in SIZES) > 0.2  # floored, renormalised: never starved


def test_sampling_options_and_sources_per_step_are_validated(tiny_cfg):
    from ecomtl.config.load import ConfigError, config_from_dict

    data = tiny_cfg.model_dump(mode="json")
    with pytest.raises(ConfigError, match=r"sampling\.options\.power"):
        config_from_dict(data | {"sampling": {"kind": "metric", "options": {"power": -1}}})
    with pytest.raises(ConfigError, match=r"sampling\.options"):
        config_from_dict(data | {"sampling": {"kind": "temperature", "options": {"power": 1}}})
    with pytest.raises(ConfigError, match=r"sampling\.sources_per_step"):
        config_from_dict(data | {"sampling": {"kind": "temperature", "sources_per_step": 0}})
    cfg = config_from_dict(data | {"sampling": {"kind": "round_robin", "sources_per_step": "all"}})
    assert cfg.sampling.per_step(3) == 3
