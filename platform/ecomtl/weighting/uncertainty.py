"""Homoscedastic-uncertainty weighting: Kendall, Gal & Cipolla, "Multi-Task Learning Using
Uncertainty to Weigh Losses for Scene Geometry and Semantics", CVPR 2018.

Each task t has a learnable log-variance s_t and contributes ``exp(-s_t) * L_t + s_t``
(the paper's per-task terms with the constant factors folded into s_t, as in most
implementations). For a fixed loss the optimum is s_t = log L_t, so a task whose loss stays
large is down-weighted, and the ``+ s_t`` term stops every weight from collapsing to zero.
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ecomtl.weighting.base import WEIGHTINGS, Weighting


class UncertaintyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    init_log_var: float = Field(0.0, description="starting log-variance s_t of every task (0: weight 1)")


@WEIGHTINGS.register("uncertainty")
class UncertaintyWeighting(Weighting):
    """Learned per-task log-variances (Kendall et al. 2018): sum exp(-s_t) L_t + s_t."""

    Options = UncertaintyOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        self.log_vars = torch.nn.Parameter(torch.full((len(self.tasks),), self.options.init_log_var))

    def combine(self, losses, step):
        s = self.log_vars[self.index(losses)].to(next(iter(losses.values())).device)
        stacked = torch.stack(list(losses.values()))
        # fp32: exp(-s) of a bf16 autocast loss would lose the small weight changes
        return (torch.exp(-s) * stacked.float() + s).sum()

    def parameters(self):
        return [self.log_vars]

    def state_tensors(self):
        return {"log_vars": self.log_vars}
