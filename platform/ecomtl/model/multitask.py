"""The multi-task model: a backbone, an optional sharing layer, one head per task.

Every caller (the training loop, evaluation, the in-process ``Predictor``, the Serve
deployments) runs the same two stages:

    encoded = model.encode(batch, route)      # backbone (+ that route's adapter), pooling
    outputs = model.apply_heads(encoded, batch, tasks)   # sharing layer + heads

(``apply_heads``, not ``apply``: ``nn.Module.apply`` is taken, and DeepSpeed calls it.)

``forward(batch, tasks)`` chains them, encoding once per adapter route: with hard
sharing and a shared (or no) adapter, three heads on one source cost one pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from ecomtl.adapters.base import NO_ROUTE, adapter_layers, set_route
from ecomtl.backbones.base import Backbone, pool


@dataclass
class Encoded:
    """The backbone's output for one batch: what heads (through the sharing layer) read."""

    pooled: torch.Tensor  # [n, hidden]
    hidden: Optional[torch.Tensor]  # [n, width, hidden]; None where no token head reads it
    mask: torch.Tensor  # [n, width]

    def rows(self, start: int, stop: int) -> "Encoded":
        """Rows [start, stop), trimmed to their own longest row (Serve splits merged batches)."""
        mask = self.mask[start:stop]
        width = max(int(mask.sum(1).max()) if len(mask) else 1, 1)
        hidden = None if self.hidden is None else self.hidden[start:stop, :width]
        return Encoded(self.pooled[start:stop], hidden, mask[:, :width])

    def float(self) -> "Encoded":
        return Encoded(self.pooled.float(), None if self.hidden is None else self.hidden.float(), self.mask)


class MultiTaskModel(nn.Module):
    def __init__(self, backbone: Optional[Backbone], heads: Mapping[str, nn.Module], sharing: nn.Module,
                 routes: Mapping[str, str], backbone_dropouts: Sequence[tuple[nn.Module, str, float]] = ()):
        super().__init__()
        self.backbone = backbone
        self.sharing = sharing
        self.heads = nn.ModuleDict(dict(heads))
        self.routes = dict(routes)  # task → adapter route
        self._adapter_layers = [] if backbone is None else adapter_layers(backbone)
        # (module, attribute, rate) of the backbone's own dropouts, captured before adapters
        # were injected: sources.<s>.backbone_dropout moves these (train/loop.py)
        self.backbone_dropouts = list(backbone_dropouts)

    def routes_of(self, tasks: list[str]) -> dict[str, list[str]]:
        """route → its tasks, in first-seen order (one backbone pass per route)."""
        out: dict[str, list[str]] = {}
        for t in tasks:
            out.setdefault(self.routes[t], []).append(t)
        return out

    def encode(self, batch: Mapping, route: str = NO_ROUTE) -> Encoded:
        set_route(self._adapter_layers, route)
        mask = batch["attention_mask"]
        types = batch.get("token_type_ids") if self.backbone.uses_token_types else None
        hidden = self.backbone.token_states(batch["input_ids"], mask, types)
        return Encoded(pool(hidden, mask, self.backbone.pooling), hidden, mask)

    def apply_heads(self, encoded: Encoded, batch: Mapping, tasks: list[str]) -> dict[str, torch.Tensor]:
        return {t: self.heads[t](self.sharing(encoded, t), batch) for t in tasks}

    def forward(self, batch: Mapping, tasks: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for route, names in self.routes_of(tasks).items():
            out.update(self.apply_heads(self.encode(batch, route), batch, names))
        return out

    def losses(self, outputs: Mapping[str, torch.Tensor], batch: Mapping) -> dict[str, torch.Tensor]:
        return {t: self.heads[t].loss(out, batch["labels"][t], batch) for t, out in outputs.items()}


def to_device(batch: Mapping, device) -> dict:
    """Tensors (and the per-task label dict) onto ``device``; other metadata as it is."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, Mapping):
            out[k] = to_device(v, device)
        else:
            out[k] = v
    return out


def trained_state_dict(model: MultiTaskModel, base_keys: Optional[set[str]] = None) -> dict[str, torch.Tensor]:
    """Every tensor but the base backbone weights (those live in the bundle's backbone/)."""
    base_keys = base_keys or set()
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k not in base_keys}
