"""Loss-weighting plug-ins. Importing this package registers every built-in weighting."""

from ecomtl.weighting.base import WEIGHTINGS, Weighting
from ecomtl.weighting import cagrad, dwa, famo, gradnorm, nashmtl, pcgrad, static, uncertainty  # noqa: F401  (registration)

__all__ = ["WEIGHTINGS", "Weighting"]
