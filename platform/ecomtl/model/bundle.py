"""The model bundle: what training hands to serving.

    bundle/
      encoder/            Hugging Face format (AutoModel/AutoTokenizer.from_pretrained open it)
      heads.safetensors   head weights
      tasks.json          tasks: head type, label names, source inputs, max lengths
      config.yaml         the experiment config it was trained with
      metrics.json        the validation metrics it was chosen on

Weights are read from safetensors only, never unpickled. A bundle is written under a
temporary name and renamed when complete, so a crash never leaves a half bundle that
looks whole.
"""

from __future__ import annotations

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

FORMAT_VERSION = 1
REQUIRED = ("encoder/config.json", "heads.safetensors", "tasks.json", "config.yaml", "metrics.json")


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


def bundle_spec(cfg: ExperimentConfig, label_infos: dict, max_lengths: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "pooling": cfg.model.pooling,
        "sources": {
            name: {
                "kind": src.kind,
                "text": src.text,
                "text_pair": src.text_pair,
                "tokens": src.tokens,
                "max_length": max_lengths[name],
            }
            for name, src in cfg.sources.items()
        },
        "tasks": {
            name: {"head": t.head, "source": t.source, "label_column": t.label, "labels": label_infos[name]}
            for name, t in cfg.tasks.items()
        },
    }


def write_bundle_files(
    out: Path, model, tokenizer, cfg: ExperimentConfig, label_infos: dict, max_lengths: dict, metrics: dict
) -> None:
    """Write the bundle's files into ``out`` (an existing, empty directory)."""
    from safetensors.torch import save_file

    model.encoder.save_pretrained(out / "encoder", safe_serialization=True)
    tokenizer.save_pretrained(out / "encoder")
    heads = {k: v.detach().cpu().contiguous() for k, v in model.head_state_dict().items()}
    save_file(heads, str(out / "heads.safetensors"))
    (out / "tasks.json").write_text(json.dumps(bundle_spec(cfg, label_infos, max_lengths), indent=2))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))


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
    return Path(dst).expanduser().resolve()


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

    @property
    def label_infos(self) -> dict:
        return {t: s["labels"] for t, s in self.spec["tasks"].items()}

    @property
    def max_lengths(self) -> dict:
        return {s: v["max_length"] for s, v in self.spec["sources"].items()}


def load_bundle(path: str | os.PathLike, device: str = "cpu") -> LoadedBundle:
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    from ecomtl.config.load import config_from_dict
    from ecomtl.model.multitask import MultiTaskModel

    path = check_bundle(path)
    spec = json.loads((path / "tasks.json").read_text())
    if spec.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {spec.get('format_version')} is not {FORMAT_VERSION}")
    cfg = config_from_dict(yaml.safe_load((path / "config.yaml").read_text()))
    encoder = AutoModel.from_pretrained(path / "encoder", use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(path / "encoder")
    task_specs = {t: {"head": s["head"], "labels": s["labels"]} for t, s in spec["tasks"].items()}
    model = MultiTaskModel(encoder, task_specs, pooling=spec["pooling"], dropout=cfg.model.dropout)
    heads = load_file(str(path / "heads.safetensors"))
    missing, unexpected = model.load_state_dict(heads, strict=False)
    missing = [k for k in missing if k.startswith("heads.")]
    if missing or unexpected:
        raise BundleError(f"{path}: head weights do not match tasks.json (missing {missing}, unexpected {unexpected})")
    model.to(device).eval()
    metrics = json.loads((path / "metrics.json").read_text())
    return LoadedBundle(path, model, tokenizer, spec, cfg, metrics)
