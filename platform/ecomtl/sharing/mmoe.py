"""MMoE: Ma et al., "Modeling Task Relationships in Multi-task Learning with Multi-gate
Mixture-of-Experts", KDD 2018.

n experts read the backbone's encoding x; each task t has its own softmax gate, and its
head reads Σ_k g_t(x)_k · f_k(x) (plus x with ``residual``). Tasks that need different
features weight the experts differently; tasks that agree share them."""

from __future__ import annotations

from pydantic import Field
from torch import nn

from ecomtl.sharing.base import SHARING
from ecomtl.sharing.experts import ExpertBank, ExpertOptions, GateStats, SoftSharing, gate, mix, zero_gate


@SHARING.register("mmoe")
class MMoE(SoftSharing):
    """Multi-gate mixture of experts: shared experts, one softmax gate per task (Ma et al. 2018)."""

    class Options(ExpertOptions):
        num_experts: int = Field(4, ge=1, le=64, description="experts shared by every task")

    def __init__(self, hidden_size, tasks, options, token_tasks=None):
        super().__init__(hidden_size, tasks, options, token_tasks)
        o = self.options
        self.experts = ExpertBank(o.num_experts, hidden_size, o.expert_hidden, o.dropout)
        self.gates = nn.ModuleDict({t: zero_gate(hidden_size, o.num_experts) for t in self.tasks})
        self.stats = nn.ModuleList([GateStats(self.tasks, o.num_experts)])

    def extract(self, x, task):
        g = gate(self.gates[task], x)
        out = mix(self.experts(x), g)
        return self.combine(x, out), [g]

    def gate_labels(self):
        return [f"expert{k}" for k in range(self.options.num_experts)]
