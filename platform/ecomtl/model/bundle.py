"""The model bundle: what training hands to serving.

    bundle/
      backbone/           the base model + tokenizer, Hugging Face format
                          (AutoModel / AutoModelForCausalLM / AutoTokenizer.from_pretrained open it)
      model.safetensors   every other trained tensor: adapters, sharing layer, heads
      tasks.json          format_version, backbone kind, pooling, adapter routes, sources, tasks
      config.yaml         the experiment config it was trained with
      metrics.json        the validation metrics it was chosen on
      manifest.json       sha256 of every other file, written last

Loading is strict: ``model.safetensors`` must hold exactly the tensors the model built
from ``tasks.json`` and ``config.yaml`` expects (a missing or unexpected one is an error
naming it), and every file must match its manifest hash. Weights are read from
safetensors only, never unpickled. A bundle is written under a temporary name and
renamed when complete, so a crash never leaves a half bundle that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import yaml

from ecomtl.config.schema import ExperimentConfig

FORMAT_VERSION = 2
BACKBONE_DIR = "backbone"
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
REQUIRED = (f"{BACKBONE_DIR}/config.json", WEIGHTS, "tasks.json", "config.yaml", "metrics.json", MANIFEST)


class BundleError(ValueError):
    pass


@contextmanager
def atomic_directory(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``dst``; on success it replaces ``dst`` by rename.
    On an exception the temporary directory is removed and ``dst`` is untouched."""
    dst = Path(dst).expanduser().resolve()
    dst.parent.mkdir(parents=True, exist_ok=True)
    _restore_set_aside(dst)
    tmp = dst.parent / f".{dst.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if dst.exists():
            old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dst, old)
        os.replace(tmp, dst)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _restore_set_aside(dst: Path) -> None:
    """A writer killed between its two renames (``dst`` moved aside, the new one not yet
    in) left the previous complete directory as ``.<name>.old-*``: put it back."""
    if dst.exists():
        return
    aside = sorted(dst.parent.glob(f".{dst.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if aside:
        os.replace(aside[-1], dst)


def bundle_spec(cfg: ExperimentConfig, label_infos: dict, max_lengths: dict, routes: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "backbone": cfg.model.backbone,
        "pooling": cfg.model.pooling,
        "routes": routes,
        "sources": {
            name: {
                "kind": src.kind,
                "text": src.text,
                "text_pair": src.text_pair,
                "tokens": src.tokens,
                "prompt": src.prompt,
                "max_length": max_lengths[name],
            }
            for name, src in cfg.sources.items()
        },
        "tasks": {
            name: {"head": t.head, "source": t.source, "label_column": t.label, "labels": label_infos[name],
                   "options": t.options}
            for name, t in cfg.tasks.items()
        },
    }


def base_keys(model) -> set[str]:
    """The model's state-dict keys that the bundle's backbone/ folder holds."""
    from ecomtl.adapters.base import base_state_dict

    return {f"backbone.model.{k}" for k in base_state_dict(model.backbone.model)[1]}


def write_bundle_files(
    out: Path, model, tokenizer, cfg: ExperimentConfig, label_infos: dict, max_lengths: dict, metrics: dict
) -> None:
    """Write the bundle's files into ``out`` (an existing, empty directory); the
    manifest last, so a bundle without one was never finished."""
    from safetensors.torch import save_file

    from ecomtl.model.multitask import trained_state_dict

    model.backbone.save_base(out / BACKBONE_DIR, tokenizer)
    save_file(trained_state_dict(model, base_keys(model)), str(out / WEIGHTS))
    (out / "tasks.json").write_text(json.dumps(bundle_spec(cfg, label_infos, max_lengths, model.routes), indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    write_manifest(out)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(root: Path) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {"format_version": FORMAT_VERSION,
                "files": {str(p.relative_to(root)): _sha256(p) for p in files}}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))


def bundle_version(path: str | os.PathLike) -> str:
    """A short id of the bundle's exact contents: the manifest's own hash."""
    return _sha256(Path(path).expanduser() / MANIFEST)[:12]


def verify_manifest(path: Path, only: Optional[list[str]] = None) -> None:
    """Every listed file (or those in ``only``) is present with its recorded hash."""
    files = json.loads((path / MANIFEST).read_text())["files"]
    for name in only if only is not None else files:
        if name not in files:
            raise BundleError(f"{path}: {name} is not in the manifest")
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: {name} is missing")
        if _sha256(f) != files[name]:
            raise BundleError(f"{path}: {name} does not match its manifest hash (changed or truncated)")


def save_bundle(dst, model, tokenizer, cfg, label_infos, max_lengths, metrics) -> Path:
    with atomic_directory(dst) as tmp:
        write_bundle_files(tmp, model, tokenizer, cfg, label_infos, max_lengths, metrics)
    return Path(dst).expanduser().resolve()


def copy_bundle(src: str | os.PathLike, dst: str | os.PathLike, metrics: Optional[dict] = None) -> Path:
    """Atomically copy a complete bundle (e.g. out of the best checkpoint)."""
    check_bundle(src)
    with atomic_directory(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
            write_manifest(tmp)
    return Path(dst).expanduser().resolve()


def read_spec(path: str | os.PathLike) -> dict:
    """tasks.json of a complete bundle of this format (what serving reads first)."""
    path = check_bundle(path)
    spec = json.loads((path / "tasks.json").read_text())
    if spec.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {spec.get('format_version')} is not {FORMAT_VERSION}; "
                          f"re-export it with this version of ecomtl")
    return spec


def check_bundle(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    missing = [f for f in REQUIRED if not (path / f).exists()]
    if missing:
        raise BundleError(f"{path} is not a complete bundle: missing {', '.join(missing)}")
    return path


@dataclass
class LoadedBundle:
    path: Path
    model: object  # MultiTaskModel, in eval mode
    tokenizer: object
    spec: dict
    config: ExperimentConfig
    metrics: dict
    version: str

    @property
    def label_infos(self) -> dict:
        return {t: s["labels"] for t, s in self.spec["tasks"].items()}

    @property
    def max_lengths(self) -> dict:
        return {s: v["max_length"] for s, v in self.spec["sources"].items()}


def load_strict(module, tensors: dict, expected: set[str], where: str) -> None:
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise BundleError(f"{where}: weights do not match the model (missing {missing[:5]}"
                          f"{' …' if len(missing) > 5 else ''}, unexpected {unexpected[:5]})")
    module.load_state_dict(tensors, strict=False)


def load_bundle(path: str | os.PathLike, device: str = "cpu", with_backbone: bool = True) -> LoadedBundle:
    """The bundle's model in eval mode. ``with_backbone=False``: the sharing layer and
    heads only (``model.apply`` works, ``encode`` does not) — what a head replica holds."""
    from safetensors.torch import load_file

    from ecomtl.config.load import config_from_dict
    from ecomtl.model.build import build_heads, build_model, load_tokenizer

    spec = read_spec(path)
    path = Path(path).expanduser()
    verify_manifest(path, None if with_backbone else ["tasks.json", "config.yaml", WEIGHTS,
                                                      f"{BACKBONE_DIR}/config.json"])
    cfg = config_from_dict(yaml.safe_load((path / "config.yaml").read_text()))
    infos = {t: s["labels"] for t, s in spec["tasks"].items()}
    tokenizer = load_tokenizer(cfg.model, str(path / BACKBONE_DIR))
    tensors = load_file(str(path / WEIGHTS))
    if with_backbone:
        model = build_model(cfg, infos, tokenizer, location=str(path / BACKBONE_DIR))
        expected = set(model.state_dict()) - base_keys(model)
    else:
        hidden = int(json.loads((path / BACKBONE_DIR / "config.json").read_text())["hidden_size"])
        model = build_heads(cfg, infos, hidden, spec["routes"])
        expected = set(model.state_dict())
        tensors = {k: v for k, v in tensors.items() if not k.startswith("backbone.")}
    load_strict(model, tensors, expected, f"{path / WEIGHTS}")
    model.to(device).eval()
    metrics = json.loads((path / "metrics.json").read_text())
    return LoadedBundle(path, model, tokenizer, spec, cfg, metrics, bundle_version(path))
