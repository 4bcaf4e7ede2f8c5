"""Mixing each head's soft loss against the teacher with its hard loss:

    loss_t = alpha_t * head.distill_loss(student, teacher, labels, T_t) + (1 - alpha_t) * hard_t

The loop calls ``mix_losses`` right after ``model.losses`` on a batch that carries
``batch["teacher"]``; what each head's soft loss is lives in the head (``TaskHead.
distill_loss``), so nothing here knows a head type."""

from __future__ import annotations

from typing import Mapping

import torch

from ecomtl.config.schema import DistillConfig


def mix_losses(model, outputs: Mapping[str, torch.Tensor], batch: Mapping, hard: Mapping[str, torch.Tensor],
               settings: DistillConfig) -> dict[str, torch.Tensor]:
    """``hard`` with every task that has teacher targets in ``batch`` mixed in."""
    mixed = dict(hard)
    for task, teacher in batch.get("teacher", {}).items():
        if task not in outputs:
            continue
        alpha, temperature = settings.settings(task)
        soft = model.heads[task].distill_loss(outputs[task], teacher, batch["labels"][task], temperature, batch)
        mixed[task] = alpha * soft + (1 - alpha) * hard[task]
    return mixed
