"""YAML files plus ``key.sub=value`` overrides → a validated ``ExperimentConfig``."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from ecomtl.config.schema import ExperimentConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message names the field."""


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, raw = item.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r}: bad key {key!r}")
    # YAML parsing gives numbers, booleans, null and lists their natural types.
    return key.split("."), yaml.safe_load(raw) if raw != "" else ""


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    data = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


# A model-level validator names the field it checked at the front of its message
# ("options.r: ..."): fold it into the dotted location, so every error reads the same.
_FIELD_PREFIX = re.compile(r"^(?:Value error, )?([A-Za-z_][\w]*(?:\.[\w]+)*): (.*)$", re.S)


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"]
        m = _FIELD_PREFIX.match(msg)
        if m and " " not in m.group(1):
            loc, msg = ".".join(x for x in (loc, m.group(1)) if x), m.group(2)
        lines.append(f"  {loc or '<root>'}: {msg}")
    return "invalid experiment config:\n" + "\n".join(lines)


def config_from_dict(data: dict, overrides: Iterable[str] = ()) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(apply_overrides(data, overrides))
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    return config_from_dict(read_yaml(path), overrides)


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
