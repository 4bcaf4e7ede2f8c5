"""Dynamic Weight Average: Liu, Johns & Davison, "End-to-End Multi-Task Learning with
Attention", CVPR 2019 (section 3.3).

    w_t = K * softmax_t(r_t / T),   r_t = Lbar_t(previous window) / Lbar_t(window before)

where Lbar is a task's mean loss over a window (the paper's epoch; here ``window`` optimizer
steps, because runs here are counted in steps; by default a twentieth of the run) and K the
number of tasks. A task whose loss fell least gets the most weight. Until a task has two
finished windows its ratio is 1.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import BaseModel, ConfigDict, Field

from ecomtl.weighting.base import WEIGHTINGS, Weighting


class DWAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(2.0, gt=0, description="softmax temperature T (the paper's 2; larger: more even)")
    window: Optional[int] = Field(
        None, ge=1, description="optimizer steps per averaging window (the paper's epoch); None = "
        "training.steps / 20, so weights move about twenty times in any run (a fixed window longer "
        "than half the run would leave every weight at 1)")


@WEIGHTINGS.register("dwa")
class DWAWeighting(Weighting):
    """Dynamic Weight Average (Liu et al. 2019): weights from the ratio of recent losses."""

    Options = DWAOptions

    def __init__(self, cfg):
        super().__init__(cfg)
        k = len(self.tasks)
        self.sums = torch.zeros(k)  # this window's loss sum and count per task
        self.counts = torch.zeros(k)
        self.last = torch.zeros(k)  # mean of the previous window; 0 = none yet
        self.before = torch.zeros(k)  # mean of the window before that
        self.window_index = torch.zeros(1)  # a tensor so that state_dict and sync cover it
        self.window = self.options.window or max(1, cfg.training.steps // 20)

    def _roll(self, window: int) -> None:
        seen = self.counts > 0  # a task absent all window keeps its history
        self.before[seen] = self.last[seen]
        self.last[seen] = self.sums[seen] / self.counts[seen]
        self.sums.zero_()
        self.counts.zero_()
        self.window_index.fill_(window)

    def weights(self) -> torch.Tensor:
        """All tasks' weights for the current window (sum K)."""
        known = (self.last > 0) & (self.before > 0)
        ratio = torch.where(known, self.last / self.before.clamp(min=1e-12), torch.ones_like(self.last))
        return len(self.tasks) * torch.softmax(ratio / self.options.temperature, dim=0)

    def combine(self, losses, step):
        window = step // self.window
        if window > int(self.window_index.item()):
            self._roll(window)
        idx = self.index(losses)
        stacked = torch.stack(list(losses.values()))
        with torch.no_grad():
            self.sums.index_add_(0, idx, stacked.detach().float().cpu())
            self.counts.index_add_(0, idx, torch.ones(len(idx)))
        return (self.weights()[idx].to(stacked.device) * stacked).sum()

    def state_tensors(self):
        return {"sums": self.sums, "counts": self.counts, "last": self.last, "before": self.before,
                "window_index": self.window_index}
