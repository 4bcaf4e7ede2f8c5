"""How per-task losses become one loss. A weighting is one file in this package that
subclasses ``Weighting`` and registers itself in ``WEIGHTINGS``. Weightings that adapt
during training (uncertainty, DWA, GradNorm, ...) keep their state in ``state_dict`` so
that it survives checkpoint/resume."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ecomtl.registry import Plugin, Registry

if TYPE_CHECKING:
    from ecomtl.config.schema import ExperimentConfig

WEIGHTINGS: Registry[type["Weighting"]] = Registry("loss weighting")


class Weighting(Plugin):
    #: gradient-surgery methods need whole per-task gradients, which ZeRO-2/3 partition
    needs_full_gradients: bool = False

    def __init__(self, cfg: "ExperimentConfig"):
        self.cfg = cfg
        self.options = self.Options.model_validate(cfg.weighting.options)

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        if cls.needs_full_gradients and cfg.distributed.zero_stage >= 2:
            raise ValueError(
                f"weighting.kind={cfg.weighting.kind!r} needs per-task gradients, which ZeRO stage "
                f"{cfg.distributed.zero_stage} partitions; use distributed.zero_stage 0 or 1"
            )

    def combine(self, losses: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
