"""Make ``ecomtl`` importable from a plain checkout (as ``ray job submit --working-dir .``
uploads it): platform/ is a source root, never a package (see DESIGN.md)."""

import sys
from pathlib import Path

try:
    import ecomtl  # noqa: F401  (installed)
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
