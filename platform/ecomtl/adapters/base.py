"""What every adapter kind provides. An adapter kind is one file in this package that
subclasses ``Adapter`` and registers itself in ``ADAPTERS``.

Adapters are injected into the backbone's Hugging Face model in place (``peft``'s
``inject_adapter_in_model``), one per *route*. A route is an adapter name: every task
maps to one (a shared adapter: the same route for all) or to none. Routing sets the
active adapter of every adapter layer directly instead of ``set_adapter``, which also
flips ``requires_grad`` and would change the parameter set DeepSpeed partitioned."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
from torch import nn

from ecomtl.registry import Plugin, Registry

if TYPE_CHECKING:
    from ecomtl.config.schema import ExperimentConfig

ADAPTERS: Registry[type["Adapter"]] = Registry("adapter")
NO_ROUTE = "__base__"  # the name under which "no adapter" travels in batches and bundles


class Adapter(Plugin):
    def __init__(self, options: dict):
        self.options = self.Options.model_validate(options)

    @classmethod
    def check(cls, cfg: "ExperimentConfig") -> None:
        """Refuse configurations this kind cannot train (the message names the field)."""

    def routes(self, tasks: list[str]) -> dict[str, str]:
        """task → route (adapter name, or ``NO_ROUTE``)."""
        return {t: NO_ROUTE for t in tasks}

    def attach(self, model: nn.Module, tasks: list[str]) -> None:
        """Inject this kind's layers into ``model`` (in place) and set what trains."""


def adapter_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def set_route(layers: list[nn.Module], route: str) -> None:
    active = [] if route == NO_ROUTE else [route]
    for layer in layers:
        layer._active_adapter = active


_ADAPTER_KEY = re.compile(r"\.(lora_[A-Za-z_]+|ia3_l|oft_r|boft_[A-Za-z]+)\.")


def base_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The model's weights as if no adapter were injected (``q_proj.base_layer.weight``
    → ``q_proj.weight``), plus the original keys they came from."""
    out, keys = {}, set()
    for k, v in model.state_dict().items():
        if _ADAPTER_KEY.search(k):
            continue
        keys.add(k)
        out[k.replace(".base_layer.", ".")] = v.detach().cpu().contiguous()
    return out, keys


def is_adapter_param(name: str) -> bool:
    return bool(_ADAPTER_KEY.search(f".{name}"))


@ADAPTERS.register("none")
class NoAdapter(Adapter):
    """No adapter: the backbone itself trains (full fine-tuning)."""
