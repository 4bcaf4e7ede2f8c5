"""The batching helpers of the deployments, without Ray: a lone call on an idle replica
closes its batch at once (the configured wait applies while other calls are in flight),
and an encoder result travels as just its own rows."""

from __future__ import annotations

import asyncio
import pickle

import torch

from ecomtl.model.multitask import Encoded
from ecomtl.serve.deployments import Batched, HostEncoded, as_encoded
from ecomtl.serve.schemas import Batching


class FakeBatchMethod:
    """Records the wait each call set before entering (as ``@serve.batch`` would read it)."""

    def __init__(self):
        self.waits, self.release = [], asyncio.Event()

    def set_max_batch_size(self, n):
        pass

    def set_batch_wait_timeout_s(self, s):
        self.wait = s

    async def __call__(self, call):
        self.waits.append(self.wait)
        await self.release.wait()
        return call


def test_a_lone_call_does_not_wait_but_company_does():
    async def run(batching):
        method = FakeBatchMethod()
        batched = Batched(method, batching)
        first = asyncio.ensure_future(batched("a"))
        await asyncio.sleep(0)
        second = asyncio.ensure_future(batched("b"))  # arrives while "a" is in flight
        await asyncio.sleep(0)
        method.release.set()
        assert await asyncio.gather(first, second) == ["a", "b"]
        assert batched.in_flight == 0
        await batched("c")  # idle again
        return method.waits

    assert asyncio.run(run(Batching(batch_wait_timeout_s=0.02))) == [0.0, 0.02, 0.0]
    assert asyncio.run(run(Batching(batch_wait_timeout_s=0.02, wait_when_idle=True))) == [0.02, 0.02, 0.02]


def test_an_encoding_travels_as_its_own_rows():
    merged = Encoded(torch.randn(64, 32), torch.randn(64, 16, 32), torch.ones(64, 16, dtype=torch.int64))
    merged.mask[3, 10:] = 0
    part = merged.rows(2, 4)
    wire = pickle.dumps(HostEncoded.of(part), protocol=5)
    assert len(wire) < len(pickle.dumps(part, protocol=5)) / 10  # a torch view pickles the whole batch
    back = as_encoded(pickle.loads(wire))
    for a, b in ((back.pooled, part.pooled), (back.hidden, part.hidden), (back.mask, part.mask)):
        assert a.shape == b.shape and torch.equal(a, b)
    assert HostEncoded.of(part, need_hidden=False).hidden is None  # token states only where asked for
    assert as_encoded(part) is part  # a local (naive-layout) encoding passes as it is


class FakeRunner:
    """An "encoder" whose outputs are plain functions of the ids (and of nothing padded)."""

    def __init__(self):
        self.passes = []

    def encode(self, feats, route, need_hidden):
        width = max(len(ids) for ids in feats.input_ids)
        self.passes.append((len(feats.input_ids), width))
        ids = torch.tensor([row + [0] * (width - len(row)) for row in feats.input_ids], dtype=torch.float32)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in feats.input_ids])
        hidden = ids[:, :, None].repeat(1, 1, 3) if need_hidden else None
        return Encoded(torch.stack([ids.sum(1), mask.sum(1).float()], 1), hidden, mask)


def test_merged_rows_are_encoded_by_length_and_come_back_in_order():
    from ecomtl.model.predictor import Features
    from ecomtl.serve.deployments import encode_by_length

    lengths = [30, 3, 28, 4, 2, 31, 5, 29]  # long reviews merged with short titles
    ids = [[i + 1] * n for i, n in enumerate(lengths)]
    feats = Features("s", "text", 0, ids, None, [f"t{i}" for i in lengths], [False] * len(ids))
    for hidden in (False, True):
        whole, runner = FakeRunner().encode(feats, "r", hidden), FakeRunner()
        got = encode_by_length(runner, feats, "r", hidden, max_pass_tokens=64)
        assert torch.equal(got.pooled, whole.pooled) and torch.equal(got.mask, whole.mask)
        assert (got.hidden is None) == (not hidden) and (got.hidden is None or torch.equal(got.hidden, whole.hidden))
        assert sum(n * w for n, w in runner.passes) <= 1.1 * sum(lengths)  # one pass: 248 tokens for 132
        assert all(n * w <= 64 for n, w in runner.passes)
    one = FakeRunner()
    encode_by_length(one, feats, "r", False, max_pass_tokens=10_000)
    assert one.passes == [(8, 31)]  # fits one pass: as before
