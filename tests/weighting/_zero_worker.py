"""What each of the 2 gloo processes of test_zero_matrix.py runs: a tiny shared trunk +
two heads under a real DeepSpeed engine at one ZeRO stage, one weighting driven the way
the training loop does (README "Loss weightings"; train/loop.py), against a plain-autograd reference
that averages gradients over ranks as data parallelism means."""

from __future__ import annotations

import copy
import json
import os

import torch
import torch.distributed as dist
from torch import nn

LR = 0.1


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(3, 4)
        self.heads = nn.ModuleDict({"rating": nn.Linear(4, 1), "match": nn.Linear(4, 1)})

    def forward(self, x):
        h = torch.tanh(self.shared(x))
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def batch(rank: int, step: int, micro: int = 0):
    g = torch.Generator().manual_seed(100 * rank + 10 * step + micro)
    x = torch.randn(6, 3, generator=g)
    # opposite targets: the two tasks' shared-trunk gradients conflict
    return x, {"rating": x.sum(1), "match": -2 * x[:, 0] + 1.0}


def task_losses(model, x, y, with_outputs=False):
    out = model(x)
    losses = {t: ((out[t] - y[t]) ** 2).mean() for t in out}
    return (losses, out) if with_outputs else losses


def weighted_loss(w, losses, step, shared, outputs=None):
    return w.backward_loss(losses, shared, outputs) if w.owns_backward else w.combine(losses, step)


def after_step(w, opt, model, x, y):
    """What the loop does after engine.step(): learnable tensors, post-step update, sync."""
    if opt is not None:
        opt.step()
        opt.zero_grad()
    if w.updates_after_step:
        with torch.no_grad():
            w.update(task_losses(model, x, y))
    w.sync()


def flat_params(module, stage: int) -> torch.Tensor:
    import deepspeed

    params = list(module.parameters())
    if stage == 3:
        with deepspeed.zero.GatheredParameters(params):
            return torch.cat([p.detach().reshape(-1).clone() for p in params])
    return torch.cat([p.detach().reshape(-1).clone() for p in params])


def weighting_opt(w):
    return torch.optim.SGD(w.parameters(), lr=LR) if w.parameters() else None


def reference_step(model, w, rank, gas):
    """One SGD step of the plain model over ``gas`` micro-batches, gradients averaged
    over micro-batches and ranks (what data parallelism with accumulation means)."""
    opt, wopt = torch.optim.SGD(model.parameters(), lr=LR), weighting_opt(w)
    for micro in range(gas):
        x, y = batch(rank, 0, micro)
        (weighted_loss(w, task_losses(model, x, y), 0, list(model.shared.parameters())) / gas).backward()
    for p in [*model.parameters(), *w.parameters()]:
        dist.all_reduce(p.grad)
        p.grad /= dist.get_world_size()
    opt.step()
    after_step(w, wopt, model, x, y)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def run_cell(stage: int, kind: str, gas: int, cfg, rank: int) -> dict:
    import deepspeed

    from ecomtl.weighting import WEIGHTINGS

    torch.manual_seed(0)
    model = Tiny()
    reference = copy.deepcopy(model)
    w, w_ref = WEIGHTINGS.get(kind)(cfg), WEIGHTINGS.get(kind)(cfg)
    engine, *_ = deepspeed.initialize(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
        config={"train_micro_batch_size_per_gpu": 6, "gradient_accumulation_steps": gas,
                "zero_optimization": {"stage": stage}, "zero_allow_untested_optimizer": True,
                "gradient_clipping": 0.0,  # DeepSpeed clips at 1.0 unless told; the reference does not
                "steps_per_print": 10**9})
    wopt = weighting_opt(w)
    shared = list(engine.module.shared.parameters())
    for step in range(3):  # DWA first uses a loss ratio at the third
        for micro in range(gas):  # DeepSpeed steps the optimizer at the last one
            x, y = batch(rank, step, micro)
            losses, outputs = task_losses(engine, x, y, with_outputs=True)
            engine.backward(weighted_loss(w, losses, step, shared, outputs))
            engine.step()
        after_step(w, wopt, engine, x, y)
        if step == 0:
            expected = reference_step(reference, w_ref, rank, gas)
            first = (flat_params(engine.module, stage) - expected).abs().max().item()
    return {"first_step_error": first, "params": flat_params(engine.module, stage).tolist(),
            "state": w.state_dict()}


def main(rank: int, world: int, port: int, cells: list, cfgs: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = {f"{stage}/{kind}/{gas}": run_cell(stage, kind, gas, cfgs[kind], rank) for stage, kind, gas in cells}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()
