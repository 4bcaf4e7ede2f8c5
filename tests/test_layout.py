"""platform/ is a source root, never a package: ``platform/__init__.py`` would shadow the
standard library's ``platform`` module that torch and Ray import (DESIGN.md, Pitfalls)."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_platform_is_not_a_package():
    assert not (REPO / "platform" / "__init__.py").exists(), "remove platform/__init__.py: it shadows stdlib 'platform'"


def test_stdlib_platform_still_importable():
    import platform

    assert hasattr(platform, "python_version"), f"'platform' resolved to {platform.__file__}"
