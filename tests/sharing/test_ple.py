"""PLE: shared and task-own experts, one or two extraction levels; what each task's loss
reaches; options validated through the config."""

import pytest
import torch

from ecomtl.sharing import SHARING
from ecomtl.sharing.ple import PLE

TOY = {"num_shared": 2, "num_task_experts": 1, "expert_hidden": 32, "dropout": 0.0}


@pytest.mark.parametrize("levels", [1, 2])
def test_two_tasks_learn_different_encodings(learns_two_tasks, levels):
    learns_two_tasks("ple", TOY | {"levels": levels})


def grads(layer) -> set[str]:
    return {n for n, p in layer.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


def test_one_level_leaves_other_tasks_experts_alone(ragged):
    layer = PLE(16, ["a", "b"], TOY)
    layer(ragged, "a").pooled.sum().backward()
    touched = grads(layer)
    assert {"levels.0.shared.in_weight", "levels.0.own.a.in_weight", "levels.0.gates.a.weight"} <= touched
    assert not any(".b." in n for n in touched)


def test_two_levels_share_through_the_shared_gate(ragged):
    layer = PLE(16, ["a", "b"], TOY | {"levels": 2})
    with torch.no_grad():  # a non-uniform shared gate, so every expert it mixes gets a gradient
        layer.levels[0].shared_gate.bias.copy_(torch.arange(4.0))
    layer(ragged, "a").pooled.sum().backward()
    touched = grads(layer)
    # b's level-1 experts feed a's level-2 shared experts; b's gates and level-2 experts do not
    assert {"levels.0.own.b.in_weight", "levels.0.shared_gate.weight", "levels.1.own.a.in_weight"} <= touched
    assert not {"levels.0.gates.b.weight", "levels.1.own.b.in_weight", "levels.1.gates.b.weight"} & touched
    assert layer.levels[1].shared_gate is None  # nothing above the last level reads it
    assert len(layer.gate_stats(level=0)["a"]) == len(layer.gate_stats()["a"]) == 3


def test_registered_with_typed_options():
    assert SHARING.get("ple") is PLE
    layer = PLE(16, ["a", "b"], {"num_shared": 3, "num_task_experts": 2})
    assert layer.options.levels == 1 and layer.options.residual
    assert layer.gate_labels() == ["shared0", "shared1", "shared2", "own0", "own1"]


def test_bad_options_name_the_field(sharing_error):
    for field, value in (("levels", 3), ("num_shared", 0), ("num_task_experts", "x"), ("expert_hidden", 0)):
        assert f"model.sharing.options.{field}" in sharing_error("ple", f"model.sharing.options={{{field}: {value}}}")
    assert "model.sharing.options.num_experts" in sharing_error("ple", "model.sharing.options={num_experts: 4}")  # MMoE's
