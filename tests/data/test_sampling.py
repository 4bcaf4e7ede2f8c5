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
