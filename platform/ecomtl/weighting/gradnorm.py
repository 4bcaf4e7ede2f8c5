"""GradNorm: Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization for
Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018.

The update is sum_i w_i g_i. Then the weights move to equalise the weighted gradient norms
G_i = w_i |g_i| around their mean Gbar, each scaled by the task's relative inverse training
rate r_i = Ltilde_i / mean(Ltilde), Ltilde_i = L_i / L_i(0):

    L_grad = sum_i | G_i - Gbar * r_i^alpha |     (target held constant, as in the paper)
    w_i <- w_i - lr * d L_grad / d w_i = w_i - lr * sign(G_i - target_i) |g_i|

and are renormalised to keep their sum (the paper: sum = number of tasks). Here g_i is the
task's gradient over all shared parameters (the paper uses the last shared layer to save
the extra backward passes; they are paid anyway by owning the backward).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ecomtl.weighting.base import WEIGHTINGS, Weighting, stack_flat, unflat


class GradNormOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(1.5, ge=0, description="restoring force towards equal training rates (the paper's 1.5)")
    lr: float = Field(0.025, gt=0, description="SGD step size of the task weights (the paper's 0.025)")


@WEIGHTINGS.register("gradnorm")
class GradNormWeighting(Weighting):
    """GradNorm (Chen et al. 2018): weights that balance task gradient norms and rates."""

    Options = GradNormOptions
    needs_full_gradients = True
    owns_backward = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.weights = torch.ones(len(self.tasks))
        self.initial_losses = torch.zeros(len(self.tasks))  # L_i(0); 0 = task not seen yet

    def single_task_scale(self, task, loss):
        # one task's weight is its own, and renormalising a subset of one leaves it unchanged;
        # its first loss is still its L(0) (local here: sync() averages it across ranks)
        i = self.tasks.index(task)
        if self.initial_losses[i] == 0:
            self.initial_losses[i] = loss.detach().float().cpu()
        return float(self.weights[i])

    def combine_gradients(self, task_grads, losses):
        idx = self.index(task_grads)
        grads = stack_flat(task_grads)
        w = self.weights[idx]
        combined = (w.to(grads.device)[:, None] * grads).sum(0)
        self._update_weights(idx, grads.norm(dim=1).cpu(), torch.stack([losses[n].float().cpu() for n in task_grads]))
        return unflat(combined, next(iter(task_grads.values())))

    def _update_weights(self, idx: torch.Tensor, norms: torch.Tensor, losses: torch.Tensor) -> None:
        unseen = self.initial_losses[idx] == 0
        self.initial_losses[idx[unseen]] = losses[unseen]
        w = self.weights[idx]
        rel = losses / self.initial_losses[idx].clamp(min=1e-12)
        rate = rel / rel.mean()
        gnorm = w * norms
        target = gnorm.mean() * rate ** self.options.alpha
        new = (w - self.options.lr * torch.sign(gnorm - target) * norms).clamp(min=1e-6)
        # Renormalise over the tasks present this step, keeping their sum: with every task
        # present (sum = number of tasks) this is the paper's renormalisation.
        self.weights[idx] = new * (w.sum() / new.sum())

    def state_tensors(self):
        return {"weights": self.weights, "initial_losses": self.initial_losses}
