"""Adapter plug-ins. Importing this package registers every built-in adapter kind."""

from ecomtl.adapters.base import ADAPTERS, NO_ROUTE, Adapter
from ecomtl.adapters import lora  # noqa: F401  (registration)

__all__ = ["ADAPTERS", "NO_ROUTE", "Adapter"]
