"""Projecting Conflicting Gradients: Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient
Surgery for Multi-Task Learning", NeurIPS 2020 (Algorithm 1).

For each task i, in a random order over the other tasks j: where g_i conflicts with g_j
(g_i . g_j < 0), project g_i onto the normal plane of g_j,
g_i <- g_i - (g_i . g_j / |g_j|^2) g_j. The update is the sum of the projected gradients.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from ecomtl.weighting.base import WEIGHTINGS, Weighting, stack_flat, unflat


class PCGradOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reduction: Literal["sum", "mean"] = Field("sum", description="sum the projected gradients (the paper) or average them")


@WEIGHTINGS.register("pcgrad")
class PCGradWeighting(Weighting):
    """PCGrad (Yu et al. 2020): project away conflicting components of task gradients."""

    Options = PCGradOptions
    needs_full_gradients = True
    owns_backward = True

    def __init__(self, cfg):
        super().__init__(cfg)
        # The random order must be the same on every rank: a generator seeded from the run.
        self.generator = torch.Generator().manual_seed(cfg.training.seed)

    def single_task_scale(self, task, loss):
        return 1.0  # nothing to project against: sum and mean of one gradient are that gradient

    def combine_gradients(self, task_grads, losses):
        grads = stack_flat(task_grads)
        projected = grads.clone()
        for i in range(len(grads)):
            for j in torch.randperm(len(grads), generator=self.generator).tolist():
                if j == i:
                    continue
                dot = projected[i] @ grads[j]
                if dot < 0:
                    projected[i] -= dot / (grads[j] @ grads[j]).clamp(min=1e-20) * grads[j]
        total = projected.sum(0) if self.options.reduction == "sum" else projected.mean(0)
        return unflat(total, next(iter(task_grads.values())))
