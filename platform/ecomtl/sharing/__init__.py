"""Sharing-layer plug-ins. Importing this package registers every built-in kind."""

from ecomtl.sharing.base import SHARING, Sharing

__all__ = ["SHARING", "Sharing"]
