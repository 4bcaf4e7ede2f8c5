"""Serving precisions: int8 replaces the backbone's Linear layers and stays close to
fp32, bf16 casts, fp16 on a CPU and unknown values are refused naming the field."""

import pytest
import torch

from ecomtl.model.precision import apply_precision


@pytest.fixture
def model_and_batch(tiny_cfg):
    from ecomtl.data.collate import pad_rows
    from ecomtl.data.prepare import fit_label_infos
    from ecomtl.model.build import build_model, load_tokenizer

    tok = load_tokenizer(tiny_cfg.model)
    torch.manual_seed(0)
    model = build_model(tiny_cfg, fit_label_infos(tiny_cfg, tiny_cfg.resolved_data_root()), tok).eval()
    enc = tok(["Lovely soft dress, fits true to size", "Runs small"])
    return model, pad_rows(enc["input_ids"], tok.pad_token_id, enc["token_type_ids"])


def test_int8_quantises_every_backbone_linear_and_stays_close(model_and_batch):
    model, batch = model_and_batch
    with torch.no_grad():
        ref = model(batch, ["rating", "stars"])
        apply_precision(model, "int8")
        out = model(batch, ["rating", "stars"])
    assert not any(type(m) is torch.nn.Linear for m in model.backbone.modules())
    assert type(model.heads["rating"].out) is torch.nn.Linear  # heads stay fp32
    for t in ref:
        torch.testing.assert_close(out[t], ref[t], atol=0.05, rtol=0.05)


def test_bf16_casts_the_backbone_only(model_and_batch):
    model, _ = model_and_batch
    apply_precision(model, "bf16")
    assert {p.dtype for p in model.backbone.parameters()} == {torch.bfloat16}
    assert model.heads["rating"].out.weight.dtype == torch.float32


def test_refusals_name_the_field(model_and_batch):
    model, _ = model_and_batch
    with pytest.raises(ValueError, match="precision: fp16 needs a GPU"):
        apply_precision(model, "fp16", "cpu")
    with pytest.raises(ValueError, match="precision: one of"):
        apply_precision(model, "int4")
    from pydantic import ValidationError

    from ecomtl.serve.schemas import AppArgs

    with pytest.raises(ValidationError, match="precision"):
        AppArgs(bundle="x", precision="int4")
