"""What sits between the backbone and the heads. A sharing kind is one file in this
package that subclasses ``Sharing`` and registers itself in ``SHARING``: it maps the
backbone's encoding to each task's own (soft sharing: experts and per-task gates)."""

from __future__ import annotations

from torch import nn

from ecomtl.registry import Plugin, Registry

SHARING: Registry[type["Sharing"]] = Registry("sharing layer")


class Sharing(Plugin, nn.Module):
    def __init__(self, hidden_size: int, tasks: list[str], options: dict):
        super().__init__()
        self.options = self.Options.model_validate(options)

    def forward(self, encoded, task: str):
        """The encoding task ``task``'s head reads."""
        raise NotImplementedError


@SHARING.register("hard")
class HardSharing(Sharing):
    """Hard parameter sharing: every head reads the backbone's encoding as it is."""

    def forward(self, encoded, task):
        return encoded
