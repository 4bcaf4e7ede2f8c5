"""How per-task losses become one loss (or one gradient). A weighting is one file in this
package that subclasses ``Weighting`` and registers itself in ``WEIGHTINGS``.

Three kinds, and how the training loop drives each per optimizer step:

- loss-level (static, uncertainty, dwa, famo): ``loss = w.combine(losses, step)`` then
  ``engine.backward(loss)``. Works at every ZeRO stage: only the scalar loss changes.
- with learnable tensors (uncertainty): ``w.parameters()`` is non-empty; their gradients
  come from that same backward and something must step them (see README.md).
- with a post-step update (famo): ``w.update(losses_after)`` once the optimizer has stepped.
- gradient-level (pcgrad, cagrad, gradnorm, nashmtl; ``owns_backward``): ``loss =
  w.backward_loss(losses, shared_params)`` then ``engine.backward(loss)``. It takes each
  task's gradient over the shared parameters, combines them with ``combine_gradients`` and
  returns a surrogate whose gradient *is* the combined one, so DeepSpeed still does its own
  reduction, accumulation and clipping. Needs whole gradients: ZeRO 0-1 only.

Every state tensor (``state_tensors``) is checkpointed by ``state_dict`` (JSON-friendly
lists, since the loop writes it into trainer_state.json) and averaged across ranks by
``sync``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, ClassVar, Optional

import torch

from ecomtl.registry import Plugin, Registry

if TYPE_CHECKING:
    from ecomtl.config.schema import ExperimentConfig

WEIGHTINGS: Registry[type["Weighting"]] = Registry("loss weighting")


def mean_across_ranks(tensors: list[torch.Tensor]) -> None:
    """Average ``tensors`` in place over all ranks; a no-op outside torch.distributed.
    One flat all-reduce rather than one per tensor: these are many small tensors."""
    import torch.distributed as dist

    if not tensors or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    # NCCL reduces only CUDA tensors, and weighting state lives on the CPU
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    with torch.no_grad():
        flat = torch.cat([t.detach().reshape(-1).float() for t in tensors])
        flat = flat.to(device) if device is not None else flat
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= dist.get_world_size()
        offset = 0
        for t in tensors:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


@contextmanager
def engine_hooks_suspended(outputs):
    """Lift DeepSpeed's backward hooks off a forward's ``outputs`` for the block, then put
    them back fresh (so the next backward, ``engine.backward``, runs its prologue). They
    are found where DeepSpeed keeps them alive, on the first output tensor; older
    DeepSpeed versions have none and this does nothing."""
    tensors = [t for t in _tensors(outputs) if isinstance(t, torch.Tensor)]
    # de-duplicated: each re-registration appends the manager to that list once more
    managers = list({id(m): m for t in tensors for m in getattr(t, "_backward_hook_managers", [])}.values())
    for manager in managers:
        manager.remove_hooks()
    try:
        yield
    finally:
        for manager in managers:
            manager.register_hooks_on_outputs(outputs)


def _tensors(outputs):
    if isinstance(outputs, dict):
        return [t for v in outputs.values() for t in _tensors(v)]
    if isinstance(outputs, (list, tuple)):
        return [t for v in outputs for t in _tensors(v)]
    return [outputs]


def stack_flat(task_grads: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """[tasks, parameters] matrix of the per-task gradients, each flattened (fp32: the
    dot products of gradient surgery are sums over millions of terms)."""
    return torch.stack([torch.cat([g.reshape(-1).float() for g in grads]) for grads in task_grads.values()])


def unflat(vector: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """``vector`` cut back into tensors shaped (and typed) like ``like``."""
    out, offset = [], 0
    for t in like:
        out.append(vector[offset:offset + t.numel()].view_as(t).to(t.dtype))
        offset += t.numel()
    return out


class Weighting(Plugin):
    #: gradient-surgery methods need whole per-task gradients, which ZeRO-2/3 partition
    needs_full_gradients: ClassVar[bool] = False
    #: the loop calls ``backward_loss`` instead of ``combine`` (gradient-level methods)
    owns_backward: ClassVar[bool] = False
    #: the loop calls ``update`` with the losses of the updated model (an extra forward)
    updates_after_step: ClassVar[bool] = False

    def __init__(self, cfg: "ExperimentConfig"):
        self.cfg = cfg
        self.options = self.Options.model_validate(cfg.weighting.options)
        #: a fixed task order: state tensors are indexed by it, on every rank alike
        self.tasks: list[str] = list(cfg.tasks)

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        if cls.needs_full_gradients and cfg.distributed.zero_stage >= 2:
            raise ValueError(
                f"weighting.kind={cfg.weighting.kind!r} needs per-task gradients, which ZeRO stage "
                f"{cfg.distributed.zero_stage} partitions; use distributed.zero_stage 0 or 1"
            )

    def index(self, names) -> torch.Tensor:
        """Positions of ``names`` in ``self.tasks`` (a step may carry only some tasks)."""
        return torch.tensor([self.tasks.index(n) for n in names], dtype=torch.long)

    # -- loss level --------------------------------------------------------------------------
    def combine(self, losses: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        if self.owns_backward:  # refuse rather than silently train on the plain sum
            raise NotImplementedError(f"{type(self).__name__} owns the backward pass: call backward_loss")
        raise NotImplementedError

    def parameters(self) -> list[torch.Tensor]:
        """Tensors trained by backprop through ``combine``'s loss; empty for most."""
        return []

    def update(self, losses: dict[str, torch.Tensor]) -> None:
        """After the optimizer step, with the (detached) losses the updated model gets."""

    # -- gradient level ----------------------------------------------------------------------
    def combine_gradients(self, task_grads: dict[str, list[torch.Tensor]],
                          losses: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """One gradient per shared parameter from each task's (same-shaped) gradients."""
        raise NotImplementedError

    def single_task_scale(self, task: str, loss: torch.Tensor) -> Optional[float]:
        """``combine_gradients`` of one task's gradient g alone, when it is a known multiple
        of g (then a step that carries only that task needs no per-task gradient: its
        loss times this factor has that gradient); None = compute it. With one source per
        step, every step of a single-head source is such a step."""
        return None

    def backward_loss(self, losses: dict[str, torch.Tensor], shared: list[torch.Tensor],
                      outputs=None) -> torch.Tensor:
        """A loss whose gradient over ``shared`` is ``combine_gradients`` of the per-task
        gradients and over every other parameter (the heads) is that of the plain sum.

        Per-task gradients are averaged across ranks first, so every rank combines the
        same gradients (PCGrad of averaged gradients, not an average of local PCGrads) and
        GradNorm's weights stay equal without another sync.

        ``outputs``: what the DeepSpeed engine's forward returned, when the losses come
        from it. DeepSpeed >= 0.18 hooks those tensors to start its backward bookkeeping
        (and scale by accumulation steps) on the first gradient through them; the per-task
        gradients must not trigger that, only the later ``engine.backward``."""
        if len(losses) == 1:  # nothing to combine: skip the per-task backward (half the step's backward cost)
            (task, loss), = losses.items()
            scale = self.single_task_scale(task, loss)
            if scale is not None:
                return loss * scale
        shared = [p for p in shared if p.requires_grad]
        task_grads = {}
        with engine_hooks_suspended(outputs):
            for name, loss in losses.items():
                grads = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
                task_grads[name] = [torch.zeros_like(p) if g is None else g for p, g in zip(shared, grads)]
        for grads in task_grads.values():
            mean_across_ranks(grads)
        detached = {n: l.detach().clone() for n, l in losses.items()}
        mean_across_ranks(list(detached.values()))
        combined = self.combine_gradients(task_grads, detached)
        total = sum(losses.values())
        # d/dp of sum(p * c) is c: swap the sum's shared-parameter gradient for the combined one.
        plain = [sum(task_grads[n][i] for n in losses) for i in range(len(shared))]
        return total + sum((p * (c - s).detach()).sum() for p, c, s in zip(shared, combined, plain))

    # -- state -------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Running or learnable state, by name; what ``state_dict`` and ``sync`` cover."""
        return {}

    def state_dict(self) -> dict:
        return {name: t.detach().cpu().tolist() for name, t in self.state_tensors().items()}

    def load_state_dict(self, state: dict) -> None:
        """``{}`` (a checkpoint from before this weighting kept state) loads nothing; a
        partial state is another kind's or version's and is refused."""
        if not state:
            return
        tensors = self.state_tensors()
        missing = set(tensors) - set(state)
        if missing:
            raise KeyError(f"weighting state lacks {sorted(missing)} (saved by another weighting kind?)")
        with torch.no_grad():
            for name, t in tensors.items():
                t.copy_(torch.tensor(state[name], dtype=t.dtype))

    def sync(self) -> None:
        """Average every state tensor across ranks (no-op without torch.distributed), so
        that all ranks weight alike after each took its own shard's losses."""
        mean_across_ranks(list(self.state_tensors().values()))
