"""One encoder, one head per task. A forward pass encodes a batch once and runs every
head that reads the batch's source (three review heads share one pass)."""

from __future__ import annotations

import torch
from torch import nn

from ecomtl.tasks import TASK_HEADS


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class MultiTaskModel(nn.Module):
    def __init__(self, encoder: nn.Module, task_specs: dict[str, dict], pooling: str = "mean",
                 dropout: float = 0.1):
        """``task_specs[name] = {"head": type name, "labels": label info, "options": {...}}``."""
        super().__init__()
        self.encoder = encoder
        self.pooling = pooling
        hidden = encoder.config.hidden_size
        self.heads = nn.ModuleDict(
            {
                name: TASK_HEADS.get(spec["head"])(hidden, spec["labels"], dropout, **spec.get("options", {}))
                for name, spec in task_specs.items()
            }
        )

    def forward(self, input_ids, attention_mask, tasks: list[str], token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**kwargs).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        return {t: self.heads[t](pooled, hidden) for t in tasks}

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("heads.")}
