"""PLE: Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
(MTL) Model for Personalized Recommendations", RecSys 2020.

Each extraction level has shared experts and experts of each task's own. Task t's gate
mixes [shared + t's own] experts (CGC, the paper's single level); between levels a shared
gate mixes every expert of the level into the input of the next level's shared experts,
while task t's next experts and gate read t's own output. Own experts keep what one task
needs from being pulled toward the others (the seesaw the paper measures on MMoE)."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ecomtl.sharing.base import SHARING
from ecomtl.sharing.experts import ExpertBank, ExpertOptions, GateStats, SoftSharing, gate, mix, zero_gate


class Level(nn.Module):
    """One extraction level; ``last`` has no shared gate (nothing above reads it)."""

    def __init__(self, hidden: int, tasks: list[str], o, last: bool):
        super().__init__()
        bank = lambda n: ExpertBank(n, hidden, o.expert_hidden, o.dropout)  # noqa: E731
        self.shared = bank(o.num_shared)
        self.own = nn.ModuleDict({t: bank(o.num_task_experts) for t in tasks})
        self.gates = nn.ModuleDict({t: zero_gate(hidden, o.num_shared + o.num_task_experts) for t in tasks})
        self.shared_gate = None if last else zero_gate(hidden, o.num_shared + len(tasks) * o.num_task_experts)


@SHARING.register("ple")
class PLE(SoftSharing):
    """Progressive layered extraction: shared and task-specific experts, gates per task (Tang et al. 2020)."""

    class Options(ExpertOptions):
        num_shared: int = Field(2, ge=1, le=64, description="shared experts per level")
        num_task_experts: int = Field(1, ge=1, le=64, description="experts of each task's own per level")
        levels: int = Field(1, ge=1, le=2, description="extraction levels (1: CGC)")

    def __init__(self, hidden_size, tasks, options, token_tasks=None):
        super().__init__(hidden_size, tasks, options, token_tasks)
        o = self.options
        self.levels = nn.ModuleList([Level(hidden_size, self.tasks, o, last=i == o.levels - 1)
                                     for i in range(o.levels)])
        self.stats = nn.ModuleList([GateStats(self.tasks, o.num_shared + o.num_task_experts)
                                    for _ in range(o.levels)])

    def extract(self, x, task):
        own_x = shared_x = x
        gates = []
        for level in self.levels:
            shared, own = level.shared(shared_x), level.own[task](own_x)
            g = gate(level.gates[task], own_x)
            if level.shared_gate is not None:
                # Only level 1 of 2 has a shared gate, and there every task's experts read
                # x: the shared branch is exact per call without running the other tasks'
                # gates (a third level would need every task's whole branch on each call).
                every = torch.cat([shared] + [own if t == task else level.own[t](x) for t in self.tasks], dim=-2)
                shared_x = self.combine(shared_x, mix(every, gate(level.shared_gate, shared_x)))
            own_x = self.combine(own_x, mix(torch.cat([shared, own], dim=-2), g))
            gates.append(g)
        return own_x, gates

    def gate_labels(self):
        o = self.options
        return [f"shared{k}" for k in range(o.num_shared)] + [f"own{k}" for k in range(o.num_task_experts)]
