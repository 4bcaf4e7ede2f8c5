"""Fast Adaptive Multitask Optimization: Liu, Liang, Jiang, Zhang, Qiu & Liu, "FAMO: Fast
Adaptive Multitask Optimization", NeurIPS 2023 (Algorithm 1; official code Cranial-XIX/FAMO).

O(1) per step: no per-task gradients, only task logits xi with weights z = softmax(xi).
The model is trained on

    sum_t z_t log(L_t - m_t) / c,   c = sum_t z_t / (L_t - m_t)   (c held constant)

(m_t: a lower bound of the loss, 0 here), whose gradient weights task t by
z_t / (c (L_t - m_t)): a balanced decrease of the log-losses. After the optimizer step,
``update`` takes the losses of the updated model and moves xi so that the tasks whose
log-loss fell least get more weight: with delta_t = log L_t(before) - log L_t(after), the
logits' gradient is the softmax Jacobian times delta, d_t = z_t (delta_t - sum_j z_j delta_j),
and xi takes one Adam step on it with weight decay ``gamma`` (the paper's regulariser).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from ecomtl.weighting.base import WEIGHTINGS, Weighting

EPS = 1e-8  # the paper's offset, so that log(L - m) stays finite at L = m


class FAMOOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lr: float = Field(0.025, gt=0, description="Adam step size of the task logits (the paper's 0.025)")
    gamma: float = Field(0.01, ge=0, description="weight decay of the logits (the paper's 0.01; pulls to equal)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam betas of the logits (the official code's)")


@WEIGHTINGS.register("famo")
class FAMOWeighting(Weighting):
    """FAMO (Liu et al. 2023): O(1) adaptive weights, logits updated from the loss change."""

    Options = FAMOOptions
    updates_after_step = True

    def __init__(self, cfg):
        super().__init__(cfg)
        k = len(self.tasks)
        self.logits = torch.zeros(k)
        # Adam state written out (not torch.optim) so that it is plain tensors that
        # state_dict saves and sync averages like the rest.
        self.exp_avg, self.exp_avg_sq, self.adam_step = torch.zeros(k), torch.zeros(k), torch.zeros(k)
        self.before = torch.full((k,), float("nan"))  # each task's loss when it was last combined

    def weights(self, idx: torch.Tensor) -> torch.Tensor:
        """z over the tasks in ``idx`` (a step may carry only some of them)."""
        return torch.softmax(self.logits[idx], dim=0)

    def combine(self, losses, step):
        idx = self.index(losses)
        stacked = torch.stack(list(losses.values())).float()
        self.before[idx] = stacked.detach().cpu()
        z = self.weights(idx).to(stacked.device)
        gap = stacked + EPS
        c = (z / gap).sum().detach()
        return (z * gap.log()).sum() / c

    def update(self, losses):
        """``losses``: the same tasks' losses after the optimizer step (same batch, no grad)."""
        names = [n for n in losses if not torch.isnan(self.before[self.tasks.index(n)])]
        if not names:
            return
        idx = self.index(names)
        after = torch.stack([losses[n].detach().float().cpu() for n in names])
        delta = (self.before[idx] + EPS).log() - (after + EPS).log()
        z = self.weights(idx)
        grad = z * (delta - (z * delta).sum())
        self._adam(idx, grad)
        self.before[idx] = float("nan")  # one update per combine

    def _adam(self, idx: torch.Tensor, grad: torch.Tensor) -> None:
        beta1, beta2 = self.options.betas
        grad = grad + self.options.gamma * self.logits[idx]  # torch Adam's L2-style weight decay
        self.adam_step[idx] += 1
        t = self.adam_step[idx]
        self.exp_avg[idx] = beta1 * self.exp_avg[idx] + (1 - beta1) * grad
        self.exp_avg_sq[idx] = beta2 * self.exp_avg_sq[idx] + (1 - beta2) * grad * grad
        m_hat = self.exp_avg[idx] / (1 - beta1 ** t)
        v_hat = self.exp_avg_sq[idx] / (1 - beta2 ** t)
        self.logits[idx] -= self.options.lr * m_hat / (v_hat.sqrt() + EPS)

    def state_tensors(self):
        return {"logits": self.logits, "exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq,
                "adam_step": self.adam_step}
