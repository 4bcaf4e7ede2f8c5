"""L2-SP (Li, Grandvalet & Davoine, ICML 2018, "Explicit Inductive Bias for Transfer
Learning with Convolutional Networks"): a penalty ``α/2 · Σ‖θ − θ₀‖²`` pulling the
weights toward where they started instead of toward zero, so that a retrain from a
bundle (``training.init_from``) moves the shared backbone — and the old heads — only as
far as the new data is worth. ``α`` is ``training.l2sp``; θ₀ are the tensors loaded
from the bundle (new tasks' heads start fresh and get no anchor).

Added to the loss of every micro-step, so it goes through DeepSpeed's backward like
the task losses (gradient accumulation averages it like them). ZeRO-1/2 keep whole
parameters on every rank, so the penalty is exact there; ZeRO-3 partitions them and is
refused in the schema."""

from __future__ import annotations

import torch


class L2SP:
    def __init__(self, model: torch.nn.Module, anchored: set[str], weight: float):
        self.weight = weight
        self.params = [(p, p.detach().clone().float()) for n, p in model.named_parameters()
                       if p.requires_grad and n in anchored]

    def penalty(self) -> torch.Tensor:
        device = self.params[0][0].device
        total = torch.zeros((), device=device)
        for i, (p, anchor) in enumerate(self.params):
            if anchor.device != p.device:  # the engine moved the model after the anchors were taken
                anchor = anchor.to(p.device)
                self.params[i] = (p, anchor)
            total = total + (p.float() - anchor).pow(2).sum()
        return 0.5 * self.weight * total

    @torch.no_grad()
    def distance(self) -> float:
        """‖θ − θ₀‖ over the anchored parameters (how far the run has moved)."""
        return float(sum(float((p.float() - a.to(p.device)).pow(2).sum()) for p, a in self.params) ** 0.5)
