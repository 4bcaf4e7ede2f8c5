"""Sharing-layer plug-ins. Importing this package registers every built-in kind."""

from ecomtl.sharing import mmoe, ple  # noqa: F401  (registers "mmoe", "ple")
from ecomtl.sharing.base import SHARING, Sharing

__all__ = ["SHARING", "Sharing"]
