"""``model.backbone_dropout``: every dropout inside the backbone takes the rate (modules
and the float rates attention kernels read), the heads keep ``model.dropout``, and an
adapter's own dropout is left alone."""

from pathlib import Path

import pytest
import torch
from torch import nn

from ecomtl.backbones.base import SourceDropout
from ecomtl.config.load import ConfigError, load_config
from ecomtl.model.build import build_model, load_tokenizer

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def _build(cfg, infos, *overrides):
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=dict(overrides))})
    return build_model(cfg, infos, load_tokenizer(cfg.model))


def _rates(module: nn.Module) -> list[float]:
    return [m.p for m in module.modules() if isinstance(m, nn.Dropout)]


def test_encoder_dropouts_take_the_rate_and_heads_keep_theirs(tiny_cfg, tiny_label_infos):
    default = _build(tiny_cfg, tiny_label_infos, ("dropout", 0.2))
    assert set(_rates(default.backbone)) == {0.2}  # a tiny model is built at model.dropout

    model = _build(tiny_cfg, tiny_label_infos, ("dropout", 0.2), ("backbone_dropout", 0.0))
    assert _rates(model.backbone) and set(_rates(model.backbone)) == {0.0}
    assert set(_rates(model.heads)) == {0.2}

    model.train()  # no random masks left in the backbone: two training-mode passes agree
    ids = torch.randint(5, 100, (3, 12))
    mask = torch.ones_like(ids)
    first, second = (model.backbone.token_states(ids, mask) for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    noisy = default.train().backbone
    assert not torch.equal(noisy.token_states(ids, mask), noisy.token_states(ids, mask))


def test_decoder_attention_rate_is_set_and_lora_dropout_kept(data_root, decoder_tokenizer_dir, tiny_label_infos):
    cfg = load_config(CONFIGS / "tiny.yaml", [
        f"data_root={data_root}", "model.backbone=decoder", f"model.pretrained={decoder_tokenizer_dir}",
        "model.tiny={family: llama, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, "
        "num_key_value_heads: 2, intermediate_size: 64}", "model.dropout=0.2", "model.backbone_dropout=0.05",
        "model.adapter.kind=lora", "model.adapter.options={r: 4, alpha: 8, dropout: 0.3}"])
    model = build_model(cfg, tiny_label_infos, load_tokenizer(cfg.model))
    attention_rates = {m.attention_dropout for m in model.backbone.modules()
                       if isinstance(getattr(m, "attention_dropout", None), float)}
    assert attention_rates == {0.05}  # Llama attention reads a float, not an nn.Dropout
    lora = {m.p for name, m in model.backbone.named_modules() if isinstance(m, nn.Dropout) and "lora" in name}
    assert lora == {0.3}  # LoRA's dropout is the adapter's option, not the backbone's


def test_rate_is_bounded(data_root):
    with pytest.raises(ConfigError, match="model.backbone_dropout"):
        load_config(CONFIGS / "tiny.yaml", [f"data_root={data_root}", "model.backbone_dropout=1.5"])


def test_source_rate_moves_only_the_backbone_and_comes_back(data_root, decoder_tokenizer_dir, tiny_label_infos):
    """``sources.<s>.backbone_dropout``: the backbone's rates (attention floats included)
    switch for that source's batches and return for the others; LoRA's and the heads'
    stay put."""
    cfg = load_config(CONFIGS / "tiny.yaml", [
        f"data_root={data_root}", "model.backbone=decoder", f"model.pretrained={decoder_tokenizer_dir}",
        "model.tiny={family: llama, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, "
        "num_key_value_heads: 2, intermediate_size: 64}", "model.dropout=0.2", "model.backbone_dropout=0.0",
        "sources.queries.backbone_dropout=0.15",
        "model.adapter.kind=lora", "model.adapter.options={r: 4, alpha: 8, dropout: 0.3}"])
    model = build_model(cfg, tiny_label_infos, load_tokenizer(cfg.model))
    switch = SourceDropout(model.backbone_dropouts, {s: src.backbone_dropout for s, src in cfg.sources.items()})

    def module_rates(lora: bool) -> set[float]:
        return {m.p for n, m in model.backbone.named_modules() if isinstance(m, nn.Dropout) and ("lora" in n) == lora}

    def backbone_rates() -> set[float]:
        return module_rates(lora=False) | {m.attention_dropout for m in model.backbone.modules()
                                           if isinstance(getattr(m, "attention_dropout", None), float)}

    assert backbone_rates() == {0.0} and module_rates(lora=True) == {0.3}
    switch.before("queries")
    assert backbone_rates() == {0.15}
    assert module_rates(lora=True) == {0.3}
    assert set(_rates(model.heads)) == {0.2}
    switch.before("reviews")
    assert backbone_rates() == {0.0}


def test_source_rate_is_bounded(data_root):
    with pytest.raises(ConfigError, match="sources.queries.backbone_dropout"):
        load_config(CONFIGS / "tiny.yaml", [f"data_root={data_root}", "sources.queries.backbone_dropout=-0.1"])
