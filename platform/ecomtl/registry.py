"""Explicit plug-in registries: a head type, a weighting or a sampler is one class plus
one ``@REGISTRY.register("name")`` line. Unknown names fail with the list of known ones."""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A KeyError for dict-like use, and a ValueError so that pydantic validators turn
    it into a field error."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownName(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def describe(self) -> list[dict[str, Any]]:
        """Each plug-in's name, one-line description and options (type, default, help)."""
        return [{"name": name, "description": one_line(obj), "options": options_table(obj)}
                for name, obj in sorted(self._items.items())]

    def __contains__(self, name: str) -> bool:
        return name in self._items


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Plugin:
    """What every plug-in declares: its typed options (validated from the config, unknown
    keys refused) and a docstring whose first line describes it in ``ecomtl plugins``."""

    Options: ClassVar[type[BaseModel]] = NoOptions


def one_line(obj) -> str:
    doc = (obj.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""


def options_table(obj) -> dict[str, dict]:
    model = getattr(obj, "Options", None)
    if model is None:
        return {}
    out = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        out[name] = {"type": getattr(ann, "__name__", None) or str(ann).replace("typing.", ""),
                     "default": None if field.is_required() else field.get_default(call_default_factory=True),
                     "help": field.description or ""}
    return out
