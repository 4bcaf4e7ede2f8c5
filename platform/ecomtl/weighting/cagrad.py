"""Conflict-Averse Gradient descent: Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient
Descent for Multi-task Learning", NeurIPS 2021 (Algorithm 1; official code Cranial-XIX/CAGrad).

With g0 the mean gradient, find simplex weights w minimising
g_w . g0 + c |g0| |g_w|  (g_w = sum_i w_i g_i), then step along
d = (g0 + c |g0| / |g_w| * g_w) / (1 + c^2) (the official rescaling). c = 0 is plain
gradient descent on the mean loss; larger c maximises the worst task's improvement more.
The weights solve a tiny problem over the tasks x tasks Gram matrix (SLSQP, as the official
code), so the cost beyond per-task gradients does not grow with the model.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ecomtl.weighting.base import WEIGHTINGS, Weighting, stack_flat, unflat


class CAGradOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    c: float = Field(0.4, ge=0, description="radius of the ball around g0 (the paper's 0.4 on NYUv2; 0 = mean)")


@WEIGHTINGS.register("cagrad")
class CAGradWeighting(Weighting):
    """CAGrad (Liu et al. 2021): the mean gradient bent towards the worst-off task."""

    Options = CAGradOptions
    needs_full_gradients = True
    owns_backward = True

    def single_task_scale(self, task, loss):
        # one task: g0 = g_w = g, so d = g + c |g| g / |g| = (1 + c) g, then / (1 + c^2)
        c = self.options.c
        return (1 + c) / (1 + c ** 2)

    def combine_gradients(self, task_grads, losses):
        from scipy.optimize import minimize

        grads = stack_flat(task_grads).double()
        k = len(grads)
        gram = (grads @ grads.T).numpy()
        g0_norm = float(np.sqrt(gram.mean() + 1e-8))  # |g0|, since g0 . g0 = mean of the Gram matrix
        radius = self.options.c * g0_norm + 1e-8
        mean_w = np.ones(k) / k

        def objective(w):  # g_w . g0 + radius |g_w|, in Gram-matrix terms
            return float(w @ gram @ mean_w + radius * np.sqrt(w @ gram @ w + 1e-8))

        res = minimize(objective, mean_w, bounds=[(0, 1)] * k,
                       constraints={"type": "eq", "fun": lambda w: 1 - w.sum()})
        g_w = torch.from_numpy(res.x) @ grads
        d = grads.mean(0) + radius / (g_w.norm() + 1e-8) * g_w
        return unflat((d / (1 + self.options.c ** 2)).float(), next(iter(task_grads.values())))
