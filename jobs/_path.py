"""Make ``ecomtl`` importable from a plain checkout (as ``ray job submit --working-dir .``
uploads it): platform/ is a source root, never a package (see DESIGN.md).

The checkout's own copy wins over an installed one: a submitted job must run the code
that was submitted (its working dir), not whatever version the cluster's image has;
``ecomtl.ray_env`` then ships that same directory to the workers with ``py_modules``."""

import sys
from pathlib import Path

_SOURCE_ROOT = Path(__file__).resolve().parents[1] / "platform"
if (_SOURCE_ROOT / "ecomtl" / "__init__.py").is_file():
    sys.path.insert(0, str(_SOURCE_ROOT))
