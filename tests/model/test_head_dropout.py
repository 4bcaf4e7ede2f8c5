"""``tasks.<t>.dropout``: one head's own dropout rate; the others keep ``model.dropout``,
and the backbone keeps its own."""

from pathlib import Path

import pytest
from torch import nn

from ecomtl.config.load import ConfigError, load_config
from ecomtl.model.build import build_model, load_tokenizer

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def _rates(module: nn.Module) -> set[float]:
    return {m.p for m in module.modules() if isinstance(m, nn.Dropout)}


def test_one_head_takes_its_own_rate(data_root, tiny_label_infos):
    cfg = load_config(CONFIGS / "tiny.yaml", [f"data_root={data_root}", "model.dropout=0.1",
                                              "model.backbone_dropout=0.0", "tasks.attributes.dropout=0.35"])
    model = build_model(cfg, tiny_label_infos, load_tokenizer(cfg.model))
    assert _rates(model.heads["attributes"]) == {0.35}
    for task in ("rating", "stars", "match"):
        assert _rates(model.heads[task]) == {0.1}, task
    assert _rates(model.backbone) == {0.0}


def test_rate_is_bounded_and_named(data_root):
    with pytest.raises(ConfigError, match="tasks.attributes.dropout"):
        load_config(CONFIGS / "tiny.yaml", [f"data_root={data_root}", "tasks.attributes.dropout=1.0"])
