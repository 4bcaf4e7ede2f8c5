"""Optimizer param groups and the warmup + decay schedule."""

from __future__ import annotations

import math

import torch

from ecomtl.config.schema import ExperimentConfig

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def param_groups(model, cfg: ExperimentConfig) -> list[dict]:
    """Encoder and the from-scratch layers apart (heads and the sharing layer's experts
    and gates start from random weights and want a larger lr);
    no weight decay on biases and norms."""
    o = cfg.optim
    head_lr = o.head_lr or o.lr * 10
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lr = head_lr if name.startswith(("heads.", "sharing.")) else o.lr
        decay = 0.0 if name.endswith(NO_DECAY) else o.weight_decay
        groups.setdefault((lr, decay), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def build_optimizer(model, cfg: ExperimentConfig, on_gpu: bool):
    groups = param_groups(model, cfg)
    if cfg.optim.impl == "deepspeed":
        # JIT-compiled on first use (~1–2 minutes, cached in ~/.cache/torch_extensions).
        if on_gpu:
            from deepspeed.ops.adam import FusedAdam

            return FusedAdam(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, adam_w_mode=True)
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, adamw_mode=True)
    # fused on CPU too: torch's default (foreach) AdamW took 82-88 ms of a MiniLM step on 2
    # cores, the fused kernel 17-19 ms, same update (benchmarks/step_costs.py)
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, fused=True)


def lr_lambda(cfg: ExperimentConfig):
    total = cfg.training.steps
    warmup = int(cfg.optim.warmup_ratio * total)
    schedule = cfg.optim.schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1 - progress)

    return factor


def build_scheduler(optimizer, cfg: ExperimentConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
