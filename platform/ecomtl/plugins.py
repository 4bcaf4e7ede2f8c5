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
    regs = registries()
    out = {name: reg.describe() for name, reg in regs.items()}
    for entry in out["heads"]:
        # what ``tasks.<t>.metric`` may name, declared by the head itself
        head = regs["heads"].get(entry["name"])
        entry["metrics"] = {"default": head.default_metric, "choices": dict(head.selectable_metrics)}
    return out


def render(described: dict[str, list[dict]]) -> str:
    lines = []
    for kind, plugins in described.items():
        lines.append(f"{kind}:")
        for p in plugins:
            lines.append(f"  {p['name']:<14} {p['description']}")
            for opt, o in p["options"].items():
                lines.append(f"      {opt} ({o['type']}, default {o['default']!r}){': ' + o['help'] if o['help'] else ''}")
            for metric, help_ in p.get("metrics", {}).get("choices", {}).items():
                default = " (default)" if metric == p["metrics"]["default"] else ""
                lines.append(f"      metric {metric}{default}: {help_}")
    return "\n".join(lines)
