"""``training.init_from`` (``ecomtl train CONFIG --init-from BUNDLE``): a run that starts
from a trained bundle instead of the pretrained backbone.

- Weights: every tensor of the model built from the config is looked up by name in the
  bundle — the base backbone in ``backbone/model.safetensors`` (Hugging Face names; a
  LoRA-wrapped layer's ``base_layer`` maps to the plain name) and everything else in
  ``model.safetensors``. Safetensors only, never a pickle. A shape mismatch is an error
  naming the tensor. A tensor the bundle lacks is an error, unless it belongs to a task
  the bundle does not have (its head, its LoRA route, its gate: they start fresh); a
  bundle tensor the model has no place for is an error, unless it belongs to a task the
  config dropped. Loaded on every rank after ``build_model`` and before
  ``deepspeed.initialize``, so every ZeRO stage partitions the loaded weights.
- Label spaces: a task the bundle has keeps the bundle's label space (class names and
  their order), whatever the new data holds — a retrain never remaps class indices; a
  value the bundle never saw counts as ``unknown_label`` in the data report. Only new
  tasks' label spaces are fit on the train split. A task of the same name must keep its
  head type and label column (give a new name to start a new head).
- Forgetting: old tasks stay trained by *replay* — keep their sources and tasks in the
  config (``sources.<s>.max_rows`` caps how much of their data is replayed,
  ``sampling.weights`` how often) — and, optionally, by L2-SP (``training.l2sp``, see
  ``lifecycle/l2sp.py``) toward the starting weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ecomtl.config.schema import ExperimentConfig

FIELD = "training.init_from"


def _error(message: str):
    from ecomtl.config.load import ConfigError

    return ConfigError(f"{FIELD}: {message}")


def check_init_from(cfg: ExperimentConfig) -> Optional[Path]:
    """The bundle to start from, checked against the config on the driver (a wrong path
    or an incompatible task fails in a second, naming the field, not in a worker)."""
    from ecomtl.model.bundle import BundleError, read_spec

    if not cfg.training.init_from:
        return None
    path = Path(cfg.training.init_from).expanduser().resolve()
    try:
        spec = read_spec(path)
    except BundleError as err:
        raise _error(str(err)) from None
    if spec["backbone"] != cfg.model.backbone:
        raise _error(f"the bundle's backbone is {spec['backbone']!r}, model.backbone is {cfg.model.backbone!r}")
    for name, task in cfg.tasks.items():
        old = spec["tasks"].get(name)
        if old is None:
            continue
        if old["head"] != task.head or old["label_column"] != task.label:
            raise _error(f"task {name!r} is a {old['head']} head on column {old['label_column']!r} in the bundle, "
                         f"but tasks.{name} says {task.head} on {task.label!r}; give the new task another name")
    return path


def init_label_infos(cfg: ExperimentConfig, root: str) -> Optional[dict]:
    """None without ``init_from``; else the bundle's label spaces for the tasks it has and
    freshly fit ones (train split) for the others."""
    from ecomtl.data.prepare import fit_label_infos
    from ecomtl.model.bundle import read_spec

    path = check_init_from(cfg)
    if path is None:
        return None
    old = {t: s["labels"] for t, s in read_spec(path)["tasks"].items() if t in cfg.tasks}
    new = {t: tc for t, tc in cfg.tasks.items() if t not in old}
    if new:
        used = {tc.source for tc in new.values()}
        sub = cfg.model_copy(update={"tasks": new, "sources": {s: v for s, v in cfg.sources.items() if s in used}})
        old |= fit_label_infos(sub, root)
    return {t: old[t] for t in cfg.tasks}


def _owner(key: str, tasks: set[str]) -> Optional[str]:
    """The task (of ``tasks``) a tensor belongs to: its head, or a per-task piece named
    after it (a LoRA route ``lora_A.<task>.weight``, a soft-sharing gate)."""
    if key.startswith("heads."):
        name = key.split(".")[1]
        return name if name in tasks else None
    return next((p for p in key.split(".") if p in tasks), None)


def bundle_tensors(path: str | Path, model) -> dict:
    """The bundle's tensors under the model's state-dict names (the base backbone's
    Hugging Face names mapped onto ``backbone.model.…``, LoRA's ``base_layer`` included)."""
    from safetensors.torch import load_file

    from ecomtl.model.bundle import BACKBONE_DIR, WEIGHTS, base_keys

    path = Path(path)
    to_model = {k[len("backbone.model."):].replace(".base_layer.", "."): k for k in base_keys(model)}
    base = load_file(str(path / BACKBONE_DIR / "model.safetensors"))
    tensors = {to_model.get(k, f"backbone.model.{k}"): v for k, v in base.items()}
    return tensors | load_file(str(path / WEIGHTS))


def load_init_weights(model, path: str | Path, bundle_tasks: list[str]) -> dict:
    """Copy the bundle's tensors into ``model`` (in place) by the rules above; returns
    ``{"loaded": [...], "fresh": [...], "dropped": [...]}`` (state-dict names)."""
    from ecomtl.model.bundle import BundleError

    model_tasks = set(model.heads.keys())
    new, dropped_tasks = model_tasks - set(bundle_tasks), set(bundle_tasks) - model_tasks
    state = model.state_dict()
    tensors = bundle_tensors(path, model)
    for key, value in tensors.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            raise BundleError(f"{FIELD}: tensor {key} is {tuple(value.shape)} in {path}, but the model built from "
                              f"the config has {tuple(state[key].shape)}: the config's model is not the bundle's")
    unexpected = sorted(k for k in set(tensors) - set(state) if _owner(k, dropped_tasks) is None)
    if unexpected:
        raise BundleError(f"{FIELD}: {path} holds tensor(s) the model built from the config has no place for: "
                          f"{unexpected[:5]}{' …' if len(unexpected) > 5 else ''} (different model section?)")
    # A tied tensor (a decoder's lm_head is its embedding) is saved once, under one name.
    loaded_storage = {state[k].data_ptr() for k in tensors if k in state}
    fresh = sorted(k for k in set(state) - set(tensors) if state[k].data_ptr() not in loaded_storage)
    missing = [k for k in fresh if _owner(k, new) is None]
    if missing:
        raise BundleError(f"{FIELD}: {path} lacks tensor(s) the model needs: {missing[:5]}"
                          f"{' …' if len(missing) > 5 else ''} (only new tasks' tensors may start fresh)")
    load = {k: v for k, v in tensors.items() if k in state}
    model.load_state_dict(load, strict=False)
    return {"loaded": sorted(load), "fresh": fresh, "dropped": sorted(set(tensors) - set(state))}


def tokenizer_location(cfg: ExperimentConfig) -> Optional[str]:
    """The bundle's own tokenizer when starting from one (its ids are what the loaded
    embeddings were trained on), else None: the configured pretrained one."""
    from ecomtl.model.bundle import BACKBONE_DIR

    init = cfg.training.init_from
    return str(Path(init).expanduser() / BACKBONE_DIR) if init else None


def start_from(model, cfg: ExperimentConfig, log=None):
    """On every rank, after ``build_model``: the bundle's weights into ``model`` and, with
    ``training.l2sp``, the L2-SP penalty anchored on them (else None)."""
    from ecomtl.lifecycle.l2sp import L2SP
    from ecomtl.model.bundle import read_spec

    if not cfg.training.init_from:
        return None
    path = Path(cfg.training.init_from).expanduser()
    report = load_init_weights(model, path, list(read_spec(path)["tasks"]))
    if log:
        fresh_tasks = sorted({_owner(k, set(cfg.tasks)) for k in report["fresh"]} - {None})
        log(f"[ecomtl] init_from {path}: {len(report['loaded'])} tensors loaded, fresh: "
            f"{', '.join(fresh_tasks) or 'none'}, dropped: {len(report['dropped'])} tensors")
    return L2SP(model, set(report["loaded"]), cfg.training.l2sp) if cfg.training.l2sp > 0 else None
