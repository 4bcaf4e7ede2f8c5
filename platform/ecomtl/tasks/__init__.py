"""Task head plug-ins. Importing this package registers every built-in head."""

from ecomtl.tasks.base import IGNORE, TASK_HEADS, TaskHead
from ecomtl.tasks import classification, generation, ranking, regression, tagging  # noqa: F401  (registration)

__all__ = ["IGNORE", "TASK_HEADS", "TaskHead"]
