"""What MMoE and PLE share: shapes on sentence and token encodings, gates that sum to 1,
position-wise token mixing, gate statistics."""

import pytest
import torch

from ecomtl.sharing import SHARING

KINDS = {"mmoe": {"num_experts": 3, "expert_hidden": 8, "dropout": 0.0},
         "ple": {"num_shared": 2, "num_task_experts": 2, "dropout": 0.0,
                 "expert_hidden": 8, "levels": 2}}


def make(kind: str, token_tasks=("tag",), **options):
    torch.manual_seed(0)
    layer = SHARING.get(kind)(16, ["cls", "tag"], KINDS[kind] | options, token_tasks).eval()
    with torch.no_grad():  # gates start uniform: move them so that their outputs depend on the input
        for name, p in layer.named_parameters():
            if "gate" in name:
                p.normal_()
    return layer


@pytest.mark.parametrize("kind", KINDS)
def test_shapes_for_sentence_and_token_encodings(kind, ragged):
    layer = make(kind)
    cls, tag = layer(ragged, "cls"), layer(ragged, "tag")
    assert cls.pooled.shape == tag.pooled.shape == (3, 16)
    assert cls.hidden is ragged.hidden  # a sentence head's tokens are not mixed (nobody reads them)
    assert tag.hidden.shape == (3, 5, 16) and not torch.allclose(tag.hidden, ragged.hidden)
    assert tag.mask is ragged.mask and not torch.allclose(cls.pooled, tag.pooled)
    assert layer(type(ragged)(ragged.pooled, None, ragged.mask), "tag").hidden is None  # Serve: no tokens sent


@pytest.mark.parametrize("kind", KINDS)
def test_gates_sum_to_one(kind, ragged):
    layer = make(kind)
    for x in (ragged.pooled, ragged.hidden):
        for task in ("cls", "tag"):
            _, gates = layer.extract(x, task)
            for g in gates:
                assert g.shape[:-1] == x.shape[:-1] and (g > 0).all()
                torch.testing.assert_close(g.sum(-1), torch.ones(x.shape[:-1]))
            assert not torch.allclose(gates[-1][0], gates[-1][1])  # input-dependent


@pytest.mark.parametrize("kind", KINDS)
def test_tokens_are_mixed_position_wise(kind, ragged):
    """A token's encoding depends on that token only: the same whether its row is padded
    wider or trimmed (Serve merges and splits batches) and equal to the layer on it alone."""
    layer = make(kind)
    with torch.no_grad():
        whole = layer(ragged, "tag").hidden
        last = layer(ragged.rows(2, 3), "tag").hidden  # trimmed to its own 3 tokens
        alone = layer.extract(ragged.hidden[1, 2], "tag")[0]
    torch.testing.assert_close(last[0], whole[2, :3])
    torch.testing.assert_close(alone, whole[1, 2])


@pytest.mark.parametrize("kind", KINDS)
def test_gate_stats_are_running_means_of_training_batches(kind, ragged):
    layer = make(kind)
    assert all(v == pytest.approx([1 / len(v)] * len(v)) for v in layer.gate_stats().values())  # untrained: uniform
    layer(ragged, "cls")  # eval mode records nothing
    assert layer.stats[-1].batches.tolist() == [0, 0]
    layer.train()
    with torch.no_grad():
        layer(ragged, "cls")
        layer(ragged, "tag")
    stats = layer.gate_stats()
    assert layer.stats[-1].batches.tolist() == [1, 1] and len(stats["cls"]) == len(layer.gate_labels())
    # the first batch's exact mean: over rows for a sentence task, over real tokens only for a token task
    layer.eval()
    cls_gates = layer.extract(ragged.pooled, "cls")[1][-1]
    tag_gates = layer.extract(ragged.hidden, "tag")[1][-1]
    real = ragged.mask.bool()
    assert stats["cls"] == pytest.approx(cls_gates.mean(0).tolist(), abs=1e-6)
    assert stats["tag"] == pytest.approx(tag_gates[real].mean(0).tolist(), abs=1e-6)
    assert stats["tag"] != pytest.approx(tag_gates.reshape(-1, tag_gates.shape[-1]).mean(0).tolist(), abs=1e-4)
    assert sum(stats["tag"]) == pytest.approx(1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_gate_stats_stay_float32_under_bf16(kind, ragged):
    """DeepSpeed's bf16 engine casts the model, buffers too: the statistics must keep
    float32 precision (bf16 rounds a mean of ~0.3 to steps of 0.002) and the EMA's law."""
    layer = make(kind).bfloat16()
    assert layer.stats[-1].mean.dtype == torch.float32 and layer.stats[-1].batches.dtype == torch.long
    pooled = ragged.pooled.bfloat16()
    enc = type(ragged)(pooled, None, ragged.mask)
    gate_bias = layer.gates["cls"].bias if kind == "mmoe" else layer.levels[-1].gates["cls"].bias

    def run(batches: int):
        layer.eval()
        want = layer.extract(pooled, "cls")[1][-1].mean(0).double()
        layer.train()
        for _ in range(batches):
            layer(enc, "cls")
        return want

    with torch.no_grad():
        first = run(120)  # one repeated batch: the mean is that batch's, after the exact phase too
        assert layer.gate_stats()["cls"] == pytest.approx(first.tolist(), abs=1e-5)
        gate_bias[0] += 2.0
        second = run(30)  # now a running average at momentum 0.01
    want = first + (second - first) * (1 - (1 - 0.01) ** 30)
    assert layer.gate_stats()["cls"] == pytest.approx(want.tolist(), abs=1e-5)
