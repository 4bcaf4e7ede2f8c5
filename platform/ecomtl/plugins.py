"""Every plug-in registry in one place, for ``ecomtl plugins`` and for docs: a new
registry is one line here."""

from __future__ import annotations

from ecomtl.registry import Registry


def registries() -> dict[str, Registry]:
    from ecomtl.adapters import ADAPTERS
    from ecomtl.backbones import BACKBONES
    from ecomtl.data.sampling import SAMPLERS
    from ecomtl.sharing import SHARING
    from ecomtl.tasks import TASK_HEADS
    from ecomtl.weighting import WEIGHTINGS

    return {"backbones": BACKBONES, "adapters": ADAPTERS, "sharing": SHARING, "heads": TASK_HEADS,
            "weightings": WEIGHTINGS, "samplers": SAMPLERS}


def describe_all() -> dict[str, list[dict]]:
    return {name: reg.describe() for name, reg in registries().items()}


def render(described: dict[str, list[dict]]) -> str:
    lines = []
    for kind, plugins in described.items():
        lines.append(f"{kind}:")
        for p in plugins:
            lines.append(f"  {p['name']:<14} {p['description']}")
            for opt, o in p["options"].items():
                lines.append(f"      {opt} ({o['type']}, default {o['default']!r}){': ' + o['help'] if o['help'] else ''}")
    return "\n".join(lines)
