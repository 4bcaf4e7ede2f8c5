"""``model.num_layers``: a student made of the first N layers of a pretrained encoder
keeps their pretrained weights and survives the bundle round trip."""

from pathlib import Path

import pytest
import torch

from ecomtl.backbones import BACKBONES
from ecomtl.backbones.packaged import resolve
from ecomtl.config.load import ConfigError, load_config
from ecomtl.model.build import build_model, load_tokenizer
from ecomtl.model.bundle import load_bundle, save_bundle

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def test_first_layers_keep_pretrained_weights_and_reload(tmp_path, data_root):
    cfg = load_config(CONFIGS / "tiny.yaml", [f"data_root={data_root}", "model.tiny=null", "model.pretrained=minilm",
                                              "model.num_layers=2"])
    full = BACKBONES.get("encoder").pretrained(resolve("minilm"))
    tok = load_tokenizer(cfg.model)
    infos = {"rating": {"names": ["1", "2"], "counts": [1, 1]}, "stars": {"mean": 0.0, "std": 1.0},
             "attributes": {"names": ["O", "B-x", "I-x"], "types": ["x"]}, "match": {"names": ["0", "1"], "counts": [1, 1]}}
    model = build_model(cfg, infos, tok)
    enc = model.backbone.model
    assert len(enc.encoder.layer) == 2 and enc.config.num_hidden_layers == 2
    kept, ref = enc.state_dict(), full.state_dict()
    assert not any(k.startswith("encoder.layer.2.") for k in kept)
    for k, v in kept.items():  # embeddings and the two kept layers: exactly the pretrained tensors
        torch.testing.assert_close(v, ref[k], rtol=0, atol=0, msg=k)
    n_student = sum(p.numel() for p in enc.parameters())
    assert n_student < sum(p.numel() for p in full.parameters()) - 3 * sum(p.numel() for p in full.encoder.layer[0].parameters())

    bundle = load_bundle(save_bundle(tmp_path / "b", model, tok, cfg, infos, {s: 64 for s in cfg.sources}, {}))
    assert len(bundle.model.backbone.model.encoder.layer) == 2
    torch.testing.assert_close(bundle.model.backbone.model.state_dict()["encoder.layer.1.output.dense.weight"],
                               ref["encoder.layer.1.output.dense.weight"])


def test_num_layers_refused_where_it_cannot_apply(data_root):
    with pytest.raises(ConfigError, match="model.num_layers: decoder backbones cannot drop layers"):
        load_config(CONFIGS / "tiny.yaml", ["model.backbone=decoder", "model.tiny=null", "model.num_layers=2"])
    cfg = load_config(CONFIGS / "tiny.yaml", [f"data_root={data_root}", "model.tiny=null", "model.num_layers=9"])
    with pytest.raises(ValueError, match="model.num_layers: 9, but the backbone has only 6 layers"):
        build_model(cfg, {}, load_tokenizer(cfg.model))
