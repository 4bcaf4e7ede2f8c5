"""Nash-MTL: Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya, "Multi-Task
Learning as a Bargaining Game", ICML 2022 (Algorithm 1; official code AvivNavon/nash-mtl).

The update d = sum_t alpha_t g_t is the Nash bargaining solution among the tasks: the
direction maximising sum_t log(g_t . d) in a ball around 0. Its optimality condition is

    G G^T alpha = 1 / alpha,  alpha > 0     (elementwise; G: the T x P task gradients)

so every task gains g_t . d = 1 / alpha_t: a task with a small gradient gets a large
weight and no task dominates (orthogonal gradients: alpha_t = 1 / |g_t|). The solution's
norm is fixed, |d|^2 = alpha^T G G^T alpha = T, whatever the gradients' size; ``max_norm``
then clips d, as the official code clips the shared parameters' gradient (at 1).

Solving (a T x T problem; its cost beyond the per-task gradients does not grow with the
model). The condition is the stationarity of the strictly convex, self-concordant

    f(alpha) = 1/2 alpha^T M alpha - sum_t log alpha_t,   M = G G^T,

so alpha is its minimiser, unique where it exists (where some direction helps every task).
The paper reaches it through a sequence of convex programs (CCP, cvxpy + ECOS); without
cvxpy, f is minimised here directly by Newton steps with a backtracking line search that
keeps alpha > 0 (numpy), at most ``optim_niter`` of them (the official code's 20 CCP
rounds), warm-started from the last alpha or from 1 / |g_t| (exact for orthogonal
gradients), whichever is better once rescaled to the exact minimiser along its ray.
As in the official code M is first divided by its Frobenius norm; alpha is scaled back.
Accepted when every alpha_t (g_t . d) is within 1e-3 of 1 (the paper's phi_t = 0). Else
(e.g. exactly opposite gradients: no direction helps both) every weight falls back to 1,
the plain sum, and the ``failures`` counter goes up. Tasks whose gradient is zero take
no part in the bargaining (their weight does not change d).

Unlike the official code, which back-propagates sum_t alpha_t L_t everywhere, the heads
get their own losses' gradients (as with every gradient-level weighting here: the
weights bargain over what the tasks share).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ecomtl.weighting.base import WEIGHTINGS, Weighting, stack_flat, unflat

STOP_TOL = 1e-9  # max_t |alpha_t (M alpha)_t - 1| at which Newton stops early
ACCEPT_TOL = 1e-3  # ... and at which its alpha is used (the official code's stopping tolerance)
GRAM_CHUNK = 1 << 22  # parameters per float64 block of the Gram matrix


class NashMTLOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_norm: float = Field(1.0, ge=0, description="clip the combined shared gradient to this norm (0: no clip; "
                                                   "the official code's 1.0)")
    update_weights_every: int = Field(1, ge=1, description="solve for alpha every this many calls (micro-steps), "
                                                           "reuse it in between (the official code's 1)")
    optim_niter: int = Field(20, ge=1, description="most solver (Newton) iterations per solve (the official code's 20)")


def gram(grads: torch.Tensor) -> np.ndarray:
    """G G^T in float64, a block of parameters at a time (no float64 copy of all of G)."""
    out = torch.zeros(len(grads), len(grads), dtype=torch.float64, device=grads.device)
    for part in grads.split(GRAM_CHUNK, dim=1):
        part = part.double()
        out += part @ part.T
    return out.cpu().numpy()


def residual(m: np.ndarray, alpha: np.ndarray) -> float:
    """max_t |alpha_t (M alpha)_t - 1|: 0 exactly at the Nash bargaining solution."""
    return float(np.max(np.abs(alpha * (m @ alpha) - 1.0)))


def solve_alpha(m: np.ndarray, start: np.ndarray, niter: int) -> np.ndarray | None:
    """The alpha > 0 with M alpha = 1 / alpha, from ``start`` (> 0) in at most ``niter``
    Newton steps; None when there is none or it was not reached."""
    k = len(m)
    norm = float(np.linalg.norm(m))
    if not np.isfinite(norm) or not np.all(np.diag(m) > 0):  # a zero gradient gains nothing from any d
        return None
    m = m / norm  # then alpha = alpha_n / sqrt(norm): (M / s)(alpha sqrt(s)) = 1 / (alpha sqrt(s))

    def f(a):
        return 0.5 * float(a @ m @ a) - float(np.log(a).sum())

    def on_ray(a):  # the minimiser of f along a's ray: s^2 a^T M a = T
        quad = float(a @ m @ a)
        return a * np.sqrt(k / quad) if quad > 0 else a

    # the last alpha, or 1 / |g_t| (exact for orthogonal gradients), whichever is lower
    previous = np.where(np.isfinite(start) & (start > 0), start, 1.0).astype(np.float64) * np.sqrt(norm)
    alpha = min(on_ray(previous), on_ray(1.0 / np.sqrt(np.diag(m))), key=f)
    for _ in range(niter):
        if residual(m, alpha) <= STOP_TOL:
            break
        grad = m @ alpha - 1.0 / alpha
        hess = m + np.diag(1.0 / alpha ** 2)
        try:
            step = -np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        slope = float(grad @ step)
        if not np.all(np.isfinite(step)) or slope >= 0:
            break
        t, f0 = 1.0, f(alpha)
        negative = step < 0  # largest t that keeps alpha > 0, with a margin
        if negative.any():
            t = min(1.0, 0.99 * float(np.min(-alpha[negative] / step[negative])))
        while t > 1e-12 and f(alpha + t * step) > f0 + 1e-4 * t * slope:
            t *= 0.5
        if t <= 1e-12:
            break
        alpha = alpha + t * step
    if not (np.all(np.isfinite(alpha)) and np.all(alpha > 0)) or residual(m, alpha) > ACCEPT_TOL:
        return None
    return alpha / np.sqrt(norm)


@WEIGHTINGS.register("nashmtl")
class NashMTLWeighting(Weighting):
    """Nash-MTL (Navon et al. 2022): the tasks' Nash bargaining solution, G G^T a = 1/a."""

    Options = NashMTLOptions
    needs_full_gradients = True
    owns_backward = True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.alpha = torch.ones(len(self.tasks))  # the official code's start
        self.calls = torch.zeros(1)  # combine_gradients calls so far (update_weights_every)
        self.failures = torch.zeros(1)  # solves that fell back to equal weights

    def combine_gradients(self, task_grads, losses):
        idx = self.index(task_grads)
        grads = stack_flat(task_grads)
        if int(self.calls.item()) % self.options.update_weights_every == 0:
            self.alpha[idx] = self._solve(grads, self.alpha[idx])
        self.calls += 1
        d = self.alpha[idx].to(grads.device) @ grads
        if self.options.max_norm > 0:
            d = d * (self.options.max_norm / d.norm().clamp(min=self.options.max_norm))
        return unflat(d, next(iter(task_grads.values())))

    def _solve(self, grads: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        m = gram(grads)
        # zero gradients cannot bargain (alpha_t -> infinity): solved without them
        live = np.diag(m) > 1e-24 * max(float(np.diag(m).max()), 0.0)
        alpha = previous.double().numpy().copy()
        solved = solve_alpha(m[np.ix_(live, live)], alpha[live], self.options.optim_niter) if live.any() else None
        if solved is None:
            self.failures += 1
            return torch.ones(len(grads))
        alpha[live] = solved
        return torch.from_numpy(alpha).float()

    def state_tensors(self):
        return {"alpha": self.alpha, "calls": self.calls, "failures": self.failures}
