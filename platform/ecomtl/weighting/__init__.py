"""Loss-weighting plug-ins. Importing this package registers every built-in weighting."""

from ecomtl.weighting.base import WEIGHTINGS, Weighting
from ecomtl.weighting import static  # noqa: F401  (registration)

__all__ = ["WEIGHTINGS", "Weighting"]
