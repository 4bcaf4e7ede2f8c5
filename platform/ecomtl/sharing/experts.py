"""Building blocks of the soft-sharing layers (MMoE, PLE): a bank of expert MLPs run as
one batched matmul, softmax gates, and the running gate statistics the run report shows."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from pydantic import Field
from torch import nn

from ecomtl.registry import NoOptions
from ecomtl.sharing.base import Sharing

# Running gate means: an exact mean over a task's first 1/MOMENTUM training batches, then
# an exponential average over about that many recent ones, so the report shows the gates
# the model ends with rather than those it started from.
MOMENTUM = 0.01


class ExpertOptions(NoOptions):
    expert_hidden: int = Field(256, ge=1, le=65536, description="width of each expert MLP's inner layer")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the experts")
    # On: a head starts from the backbone's encoding plus a correction, not from the
    # output of freshly initialised MLPs, and the backbone keeps the direct gradient path
    # it has under hard sharing: a soft-sharing run starts where hard sharing does.
    residual: bool = Field(True, description="encoding + mixture (on) or the mixture alone (off)")


class ExpertBank(nn.Module):
    """``num`` two-layer MLPs hidden → expert_hidden → hidden on the same input.
    ``forward(x [..., hidden]) → [..., num, hidden]``. One einsum per layer instead of a
    Python loop over ``num`` Linear modules: one kernel, and one module for ZeRO-3 to
    gather. Outputs keep the backbone's width so heads are built unchanged."""

    def __init__(self, num: int, hidden: int, expert_hidden: int, dropout: float):
        super().__init__()
        self.in_weight = nn.Parameter(torch.empty(num, hidden, expert_hidden))
        self.in_bias = nn.Parameter(torch.empty(num, expert_hidden))
        self.out_weight = nn.Parameter(torch.empty(num, expert_hidden, hidden))
        self.out_bias = nn.Parameter(torch.empty(num, hidden))
        self.dropout = nn.Dropout(dropout)
        # nn.Linear's default init (uniform ±1/sqrt(fan_in)), per expert
        for w, b, fan_in in ((self.in_weight, self.in_bias, hidden), (self.out_weight, self.out_bias, expert_hidden)):
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
            nn.init.uniform_(b, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("...h,ehf->...ef", x, self.in_weight) + self.in_bias
        z = self.dropout(nn.functional.gelu(z))
        return torch.einsum("...ef,efh->...eh", z, self.out_weight) + self.out_bias


def gate(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Softmax gate weights [..., experts] for input ``x`` (sum to 1 over experts).
    Computed in float32: under bf16 autocast a softmax over a few logits is cheap, and
    its rounding would show in the gate statistics."""
    return torch.softmax(linear(x).float(), dim=-1)


def zero_gate(hidden: int, experts: int) -> nn.Linear:
    """A gate that starts uniform (zero weights and bias): every task begins reading the
    same average of its experts and moves away only as far as its loss asks."""
    g = nn.Linear(hidden, experts)
    nn.init.zeros_(g.weight)
    nn.init.zeros_(g.bias)
    return g


def mix(outputs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k weights[..., k] · outputs[..., k, :], in the experts' dtype."""
    return torch.einsum("...e,...eh->...h", weights.to(outputs.dtype), outputs)


class GateStats(nn.Module):
    """Per-task running mean of gate weights, as buffers: saved in checkpoints and the
    bundle (so a report can read them from either) and moved with the model. Updated in
    training mode only; evaluation and serving leave them as trained. Each rank records
    what it saw (no all-reduce): rank 0's view, which is what its bundle holds."""

    def __init__(self, tasks: list[str], width: int):
        super().__init__()
        self.tasks = list(tasks)
        self.register_buffer("mean", torch.full((len(tasks), width), 1.0 / width))
        self.register_buffer("batches", torch.zeros(len(tasks), dtype=torch.long))

    @torch.no_grad()
    def record(self, task: str, weights: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        """``weights`` [..., width]; ``mask`` [...] (token gates: padding is not counted)."""
        if not self.training or weights.numel() == 0:
            return
        w = weights.detach().float().reshape(-1, weights.shape[-1])
        if mask is None:
            batch_mean = w.mean(0)
        else:
            m = mask.reshape(-1, 1).to(w.dtype)
            batch_mean = (w * m).sum(0) / m.sum().clamp_min(1)
        i = self.tasks.index(task)
        self.batches[i] += 1
        # tensor ops only: no host sync in the training step on a GPU
        rate = (1.0 / self.batches[i].float()).clamp_min(MOMENTUM)
        self.mean[i] += rate * (batch_mean - self.mean[i])

    def as_dict(self) -> dict[str, list[float]]:
        return {t: [float(x) for x in row] for t, row in zip(self.tasks, self.mean.detach().cpu())}

    def _apply(self, fn, recurse=True):
        # DeepSpeed's bf16 engine casts the whole module, buffers too; in bf16 (8-bit
        # mantissa) a running mean stops moving once updates fall under its rounding.
        super()._apply(fn, recurse)
        self.mean = self.mean.float()
        return self


class SoftSharing(Sharing):
    """What MMoE and PLE share: the same experts and gates on the pooled vector and, for
    token-level tasks, on every token state; gate statistics per level.

    Nothing is cached between calls: ``apply_heads`` calls the layer once per task on one
    encoding, and each call recomputes the experts from that encoding (a cache keyed on
    the tensor would go stale under in-place ops and hold graphs across tasks' backward).
    On the pooled vector the recomputation costs n rows; token states are only mixed for
    the tasks that read them."""

    def extract(self, x: torch.Tensor, task: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``x`` [..., hidden] → (task's encoding [..., hidden], its gate weights per level)."""
        raise NotImplementedError

    def forward(self, encoded, task):
        pooled, gates = self.extract(encoded.pooled, task)
        hidden, mask = encoded.hidden, None
        if hidden is not None and task in self.token_tasks:
            # Per token, with each token's own gate: MMoE's gate reads what its experts
            # read (g(x) with f(x)), so this is the layer applied position-wise — a brand
            # token and a colour token may want different experts, and a token's encoding
            # does not depend on its padding or batch (Serve trims and merges batches).
            hidden, gates = self.extract(hidden, task)
            mask = encoded.mask
        for stats, g in zip(self.stats, gates):
            stats.record(task, g, mask)  # what the task's head reads: tokens, or the pooled vector
        return dataclasses.replace(encoded, pooled=pooled, hidden=hidden)

    def combine(self, x: torch.Tensor, mixture: torch.Tensor) -> torch.Tensor:
        return x + mixture if self.options.residual else mixture

    def gate_stats(self, level: int = -1) -> dict[str, list[float]]:
        """Of the gates feeding the heads by default; ``level`` picks an earlier one (PLE)."""
        return self.stats[level].as_dict()
