"""Bundle round trip (export → strict load → identical outputs) for an encoder and for a
decoder with per-task LoRA; atomic writes; manifest; safetensors only."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ecomtl.data.collate import collate
from ecomtl.data.prepare import prepare_data
from ecomtl.model.build import build_model, load_tokenizer
from ecomtl.model.bundle import (BundleError, _sha256, atomic_directory, check_bundle, load_bundle, read_spec,
                                 save_bundle)


def build(cfg):
    tok = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tok)
    torch.manual_seed(0)
    model = build_model(cfg, data.label_infos, tok).eval()
    # adapters start as a no-op (LoRA's B is zero): perturb every tensor so the round
    # trip is checked on values that differ from a fresh build
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return tok, data, model


def assert_same_outputs(cfg, data, tok, model, loaded):
    for source, tasks in cfg.task_names_by_source().items():
        split = data.splits["validation"][source]
        dtypes = {t: model.heads[t].label_dtype for t in tasks}
        batch = collate(split, np.arange(8), tok.pad_token_id, dtypes)
        with torch.no_grad():
            want, got = model(batch, tasks), loaded.model(batch, tasks)
        for t in tasks:
            torch.testing.assert_close(got[t], want[t], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["encoder", "decoder_lora"])
def test_round_trip_gives_identical_outputs(kind, tiny_cfg, tiny_decoder_cfg, tmp_path):
    cfg = tiny_cfg if kind == "encoder" else tiny_decoder_cfg
    tok, data, model = build(cfg)
    path = save_bundle(tmp_path / "b", model, tok, cfg, data.label_infos, data.max_lengths, {"aggregate": 0.1})
    files = {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()}
    assert {"model.safetensors", "backbone/model.safetensors", "manifest.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)  # no pickles in a bundle
    trained = set(load_file(str(path / "model.safetensors")))
    assert any(k.startswith("heads.") for k in trained)
    if kind == "decoder_lora":
        assert read_spec(path)["routes"] == {t: t for t in cfg.tasks}  # one adapter per task
        assert {f"lora_A.{t}." for t in cfg.tasks} <= {k[k.index("lora_A."):].split("weight")[0] for k in trained
                                                       if "lora_A." in k}
    loaded = load_bundle(path)
    assert loaded.label_infos == data.label_infos and loaded.max_lengths == data.max_lengths
    assert_same_outputs(cfg, data, tok, model, loaded)


def test_base_backbone_folder_opens_with_from_pretrained(tiny_decoder_cfg, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, data, model = build(tiny_decoder_cfg)
    path = save_bundle(tmp_path / "b", model, tok, tiny_decoder_cfg, data.label_infos, data.max_lengths, {})
    base, info = AutoModelForCausalLM.from_pretrained(path / "backbone", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not any("lora" in k for k in base.state_dict())
    assert AutoTokenizer.from_pretrained(path / "backbone").pad_token is not None


def test_missing_or_unexpected_tensor_names_it(tiny_decoder_cfg, tmp_path):
    tok, data, model = build(tiny_decoder_cfg)
    path = save_bundle(tmp_path / "b", model, tok, tiny_decoder_cfg, data.label_infos, data.max_lengths, {})
    tensors = load_file(str(path / "model.safetensors"))
    victim = next(k for k in sorted(tensors) if "lora_B.match" in k)
    del tensors[victim]
    tensors["heads.ghost.weight"] = torch.zeros(1)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(BundleError, match="manifest hash"):  # a changed file is caught first
        load_bundle(path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = _sha256(path / "model.safetensors")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=victim.replace(".", r"\.")) as err:
        load_bundle(path)
    assert "heads.ghost.weight" in str(err.value)


def test_format_version_is_checked(tiny_cfg, tmp_path):
    tok, data, model = build(tiny_cfg)
    path = save_bundle(tmp_path / "b", model, tok, tiny_cfg, data.label_infos, data.max_lengths, {})
    spec = json.loads((path / "tasks.json").read_text())
    spec["format_version"] = 1
    (path / "tasks.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match="bundle format 1"):
        read_spec(path)


def test_crash_mid_write_keeps_previous_bundle(tiny_cfg, tmp_path):
    tok, data, model = build(tiny_cfg)
    dst = tmp_path / "bundle"
    save_bundle(dst, model, tok, tiny_cfg, data.label_infos, data.max_lengths, {"aggregate": 0.1})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_directory(dst) as tmp:
            (tmp / "tasks.json").write_text("{half")
            raise RuntimeError("disk full")
    assert load_bundle(dst).metrics == {"aggregate": 0.1}
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temp directory left behind


def test_incomplete_bundle_is_refused(tiny_cfg, tmp_path):
    tok, data, model = build(tiny_cfg)
    dst = save_bundle(tmp_path / "b", model, tok, tiny_cfg, data.label_infos, data.max_lengths, {})
    (dst / "model.safetensors").unlink()
    torch.save(model.state_dict(), dst / "model.pt")  # a pickle is never read instead
    with pytest.raises(BundleError, match="model.safetensors"):
        load_bundle(dst)
    with pytest.raises(BundleError, match="not a complete bundle"):
        check_bundle(tmp_path)
