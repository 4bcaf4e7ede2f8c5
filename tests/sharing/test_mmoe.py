"""MMoE: learns task-specific encodings where one shared encoding cannot; gates are per
task, experts shared; options are validated through the config."""

import pytest
import torch

from ecomtl.sharing import SHARING
from ecomtl.sharing.mmoe import MMoE

TOY = {"num_experts": 4, "expert_hidden": 32, "dropout": 0.0}


@pytest.mark.parametrize("residual", [True, False])
def test_two_tasks_learn_different_encodings(learns_two_tasks, residual):
    learns_two_tasks("mmoe", TOY | {"residual": residual})


def test_experts_are_shared_gates_are_not(ragged):
    layer = MMoE(16, ["a", "b"], TOY)
    layer(ragged, "a").pooled.sum().backward()
    assert layer.experts.in_weight.grad.abs().sum() > 0
    assert layer.gates["a"].weight.grad.abs().sum() > 0
    assert layer.gates["b"].weight.grad is None


def test_registered_with_typed_options():
    assert SHARING.get("mmoe") is MMoE
    layer = MMoE(16, ["a"], {"num_experts": 3})
    assert layer.options.expert_hidden == 256 and layer.options.residual
    assert layer.gate_labels() == ["expert0", "expert1", "expert2"]
    assert layer.experts(torch.zeros(2, 16)).shape == (2, 3, 16)


def test_bad_options_name_the_field(sharing_error):
    assert "model.sharing.options.num_experts" in sharing_error("mmoe", "model.sharing.options={num_experts: 0}")
    assert "model.sharing.options.dropout" in sharing_error("mmoe", "model.sharing.options={dropout: 1.0}")
    assert "model.sharing.options.experts" in sharing_error("mmoe", "model.sharing.options={experts: 4}")  # a typo
    msg = sharing_error("mmoe", "model.sharing.kind=moe")
    assert "model.sharing.kind" in msg and "mmoe" in msg and "ple" in msg
