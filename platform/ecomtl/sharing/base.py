"""What sits between the backbone and the heads. A sharing kind is one file in this
package that subclasses ``Sharing`` and registers itself in ``SHARING``: it maps the
backbone's encoding to each task's own (soft sharing: experts and per-task gates)."""

from __future__ import annotations

from typing import Iterable, Optional

from torch import nn

from ecomtl.registry import Plugin, Registry

SHARING: Registry[type["Sharing"]] = Registry("sharing layer")


class Sharing(Plugin, nn.Module):
    #: True when heads read the backbone's encoding unchanged (a decoding head, which
    #: runs the backbone alone at inference, needs that)
    identity: bool = False

    def __init__(self, hidden_size: int, tasks: list[str], options: dict,
                 token_tasks: Optional[Iterable[str]] = None):
        """``token_tasks``: the tasks whose heads read token states (``level == "token"``).
        Only their token states go through the layer: in training every encoding carries
        them, and mixing [n, width, hidden] for a head that reads the pooled vector would
        cost a per-token MLP per expert for nothing. None: every task (safe, slower)."""
        super().__init__()
        self.options = self.Options.model_validate(options)
        self.tasks = list(tasks)
        self.token_tasks = set(self.tasks if token_tasks is None else token_tasks)

    def forward(self, encoded, task: str):
        """The encoding task ``task``'s head reads."""
        raise NotImplementedError

    def gate_stats(self) -> dict[str, list[float]]:
        """task → running mean of its gate weights over ``gate_labels()`` (training
        batches only); empty for a layer without gates."""
        return {}

    def gate_labels(self) -> list[str]:
        """What each entry of a ``gate_stats()`` list weighs (the experts, in order)."""
        return []


@SHARING.register("hard")
class HardSharing(Sharing):
    """Hard parameter sharing: every head reads the backbone's encoding as it is."""

    identity = True

    def forward(self, encoded, task):
        return encoded
