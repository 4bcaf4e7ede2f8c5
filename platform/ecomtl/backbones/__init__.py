"""Backbone plug-ins. Importing this package registers every built-in backbone."""

from ecomtl.backbones.base import BACKBONES, Backbone, pool
from ecomtl.backbones import decoder, encoder  # noqa: F401  (registration)

__all__ = ["BACKBONES", "Backbone", "pool"]
