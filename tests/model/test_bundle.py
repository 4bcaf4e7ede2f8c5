"""Bundle round trip (export → load → same predictions), atomic writes, safetensors only."""

import numpy as np
import pytest
import torch

from ecomtl.data.collate import collate
from ecomtl.data.prepare import prepare_data
from ecomtl.model.bundle import BundleError, atomic_directory, check_bundle, load_bundle, save_bundle
from ecomtl.model.encoder import load_encoder, load_tokenizer
from ecomtl.model.multitask import MultiTaskModel


def build(tiny_cfg):
    tok = load_tokenizer(tiny_cfg.model)
    data = prepare_data(tiny_cfg, tok)
    torch.manual_seed(0)
    specs = {t: {"head": c.head, "labels": data.label_infos[t]} for t, c in tiny_cfg.tasks.items()}
    model = MultiTaskModel(load_encoder(tiny_cfg.model, len(tok)), specs).eval()
    return tok, data, model


def test_round_trip_gives_identical_predictions(tiny_cfg, tmp_path):
    tok, data, model = build(tiny_cfg)
    path = save_bundle(tmp_path / "b", model, tok, tiny_cfg, data.label_infos, data.max_lengths, {"aggregate": 0.1})
    files = {p.name for p in path.rglob("*") if p.is_file()}
    assert "heads.safetensors" in files and "model.safetensors" in files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)  # no pickles in a bundle
    loaded = load_bundle(path)
    assert loaded.label_infos == data.label_infos and loaded.max_lengths == data.max_lengths
    for source, tasks in tiny_cfg.task_names_by_source().items():
        split = data.splits["validation"][source]
        dtypes = {t: model.heads[t].label_dtype for t in tasks}
        batch = collate(split, np.arange(8), tok.pad_token_id, dtypes)
        args = (batch["input_ids"], batch["attention_mask"], tasks)
        kw = {"token_type_ids": batch.get("token_type_ids")}
        with torch.no_grad():
            want, got = model(*args, **kw), loaded.model(*args, **kw)
        for t in tasks:
            torch.testing.assert_close(got[t], want[t], rtol=0, atol=0)


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
    (dst / "heads.safetensors").unlink()
    torch.save(model.head_state_dict(), dst / "heads.pt")  # a pickle is never read instead
    with pytest.raises(BundleError, match="heads.safetensors"):
        load_bundle(dst)
    with pytest.raises(BundleError, match="not a complete bundle"):
        check_bundle(tmp_path)
