"""Fixed per-task weights from the config (``tasks.<name>.weight``): the baseline every
MTL paper compares against, and what the Tune sweep searches over."""

from __future__ import annotations

from ecomtl.weighting.base import WEIGHTINGS, Weighting


@WEIGHTINGS.register("static")
class StaticWeighting(Weighting):
    """Fixed per-task weights from the config (tasks.<t>.weight)."""

    def combine(self, losses, step):
        weights = {name: task.weight for name, task in self.cfg.tasks.items()}
        return sum(weights[name] * loss for name, loss in losses.items())
