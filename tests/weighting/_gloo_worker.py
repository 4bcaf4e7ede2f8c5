"""What each of the 2 gloo processes of test_sync.py runs. A plain module (not a test
file) so that torch.multiprocessing's spawned children can import it by name."""

from __future__ import annotations

import json
import os

import torch
import torch.distributed as dist


def drive(w, rank: int) -> None:
    """Give ``w`` rank-dependent losses, as two ranks with different shards would."""
    scale = 1.0 + rank
    if w.owns_backward:
        g = {"rating": [torch.tensor([3.0 * scale, 4.0])], "stars": [torch.tensor([1.0, 0.0])]}
        w.combine_gradients(g, {"rating": torch.tensor(1.0), "stars": torch.tensor(1.0)})
        w.combine_gradients(g, {"rating": torch.tensor(0.5 * scale), "stars": torch.tensor(1.0)})
        return
    for step in range(4):
        losses = {"rating": torch.tensor(2.0 * scale / (step + 1)), "match": torch.tensor(1.0 + rank)}
        loss = w.combine(losses, step)
        if w.parameters():
            loss.backward()
            with torch.no_grad():
                for p in w.parameters():
                    p -= 0.1 * p.grad
                    p.grad = None
        w.update({n: v * 0.9 for n, v in losses.items()})


def surrogate_grad(w, rank: int) -> list[float]:
    """The shared parameter's gradient from ``backward_loss``, averaged over ranks as
    DeepSpeed would: rank 0's task gradients are (1, 0) and (-1, 1), rank 1's (3, 0)
    and (-3, 1)."""
    p = torch.zeros(2, requires_grad=True)
    k = 1.0 + 2 * rank
    losses = {"rating": p @ torch.tensor([k, 0.0]), "match": p @ torch.tensor([-k, 1.0])}
    w.backward_loss(losses, [p]).backward()
    dist.all_reduce(p.grad)
    return (p.grad / dist.get_world_size()).tolist()


def main(rank: int, world: int, port: int, cfgs: dict, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from ecomtl.weighting import WEIGHTINGS

        out = {}
        for kind, cfg in cfgs.items():
            if kind == "pcgrad":  # stateless: checked through backward_loss below
                continue
            w = WEIGHTINGS.get(kind)(cfg)
            drive(w, rank)
            before = w.state_dict()
            w.sync()
            out[kind] = {"before": before, "after": w.state_dict()}
        out["pcgrad_grad"] = surrogate_grad(WEIGHTINGS.get("pcgrad")(cfgs["pcgrad"]), rank)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(out, f)
    finally:
        dist.destroy_process_group()
