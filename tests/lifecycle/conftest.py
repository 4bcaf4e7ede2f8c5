"""A source bundle for retraining and adapting: the tiny config's model built without
training (seed 7, so that a run seeded 0 cannot reproduce its weights by chance), with
rating's label space stored in reverse order (a retrain that re-fit labels would flip
it back)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"
ADAPT_CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "adapt_configs"
SOURCE_SEED = 7


def _tiny_config(data_root, storage, overrides=()):
    from ecomtl.config.load import load_config

    return load_config(CONFIGS / "tiny.yaml", [f"data_root={data_root}", f"output.storage_path={storage}",
                                               *overrides])


@pytest.fixture(scope="session")
def source_bundle(tmp_path_factory, data_root) -> Path:
    import torch

    from ecomtl.data.prepare import fit_label_infos
    from ecomtl.model.build import build_model, load_tokenizer
    from ecomtl.model.bundle import save_bundle

    tmp = tmp_path_factory.mktemp("source")
    cfg = _tiny_config(data_root, tmp / "runs", [f"training.seed={SOURCE_SEED}"])
    infos = fit_label_infos(cfg, data_root)
    infos["rating"] = {"names": infos["rating"]["names"][::-1], "counts": infos["rating"]["counts"][::-1]}
    torch.manual_seed(SOURCE_SEED)
    tok = load_tokenizer(cfg.model)
    model = build_model(cfg, infos, tok)
    lengths = {s: v.max_length if isinstance(v.max_length, int) else 32 for s, v in cfg.sources.items()}
    return save_bundle(tmp / "bundle", model, tok, cfg, infos, lengths, {"untrained": True})


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(data_root, storage, overrides)``: the tiny config, validated."""
    return _tiny_config
