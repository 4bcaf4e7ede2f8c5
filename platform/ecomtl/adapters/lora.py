"""LoRA (Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models") through
``peft``: one adapter shared by all tasks, or one per task over a frozen backbone. A
step routes each task's batch through its own adapter; a served batch that mixes tasks
is encoded once per adapter."""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from ecomtl.adapters.base import ADAPTERS, Adapter, is_adapter_param

SHARED = "shared"


class LoraOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    mode: Literal["shared", "per_task"] = Field("per_task", description="one adapter for all tasks, or one per task")
    r: int = Field(16, ge=1, le=1024, description="rank")
    alpha: float = Field(32.0, gt=0, description="scaling numerator (scale = alpha / r)")
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Union[Literal["all-linear"], list[str]] = Field(
        "all-linear", description="module names to adapt, or every linear layer but the output")
    freeze_base: bool = Field(True, description="train only adapters and heads (False: the base trains too)")


@ADAPTERS.register("lora")
class Lora(Adapter):
    """LoRA adapters (peft): one shared, or one per task routed by the batch's task."""

    Options = LoraOptions

    @classmethod
    def check(cls, cfg):
        opts = LoraOptions.model_validate(cfg.model.adapter.options)
        if opts.mode == "per_task" and not opts.freeze_base:
            raise ValueError("model.adapter.options.freeze_base: per-task adapters need a frozen base "
                             "(a trained base would be shared by all tasks anyway: use mode 'shared')")

    def routes(self, tasks):
        return {t: (t if self.options.mode == "per_task" else SHARED) for t in tasks}

    def attach(self, model, tasks):
        from peft import LoraConfig, inject_adapter_in_model

        o = self.options
        for name in dict.fromkeys(self.routes(tasks).values()):
            config = LoraConfig(r=o.r, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=o.target_modules,
                                bias="none")
            inject_adapter_in_model(config, model, adapter_name=name)
        for name, p in model.named_parameters():
            p.requires_grad = is_adapter_param(name) or not o.freeze_base
