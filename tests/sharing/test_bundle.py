"""An MMoE / PLE model in a bundle: every sharing tensor (gate statistics too) is saved,
loads strictly, and the loaded model, the heads-only model a Serve ``Head`` replica
loads, and the in-process ``Predictor`` all give the training model's outputs."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ecomtl.data.collate import collate
from ecomtl.data.prepare import prepare_data
from ecomtl.model.build import build_model, load_tokenizer
from ecomtl.model.bundle import load_bundle, save_bundle
from ecomtl.model.predictor import Predictor

KINDS = {"mmoe": "{num_experts: 3, expert_hidden: 16}",
         "ple": "{num_shared: 2, num_task_experts: 1, expert_hidden: 16, levels: 2}"}
RAW = {"reviews": [("Love this dress, fits perfectly", None), ("Cheap fabric, returned it", None)],
       "queries": [("red nike running shoes", None), ("samsung 55 inch tv", None)],
       "offers": [("sony bravia 40in lcd tv", "Sony BRAVIA 40\" LCD HDTV"), ("apple ipod nano", "canon eos 5d")]}


@pytest.fixture(params=list(KINDS))
def trained(request, soft_cfg, tmp_path):
    cfg = soft_cfg(request.param, KINDS[request.param])
    tok = load_tokenizer(cfg.model)
    data = prepare_data(cfg, tok)
    torch.manual_seed(0)
    model = build_model(cfg, data.label_infos, tok)
    with torch.no_grad():  # gates start uniform: move every tensor off its fresh-build value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for source, tasks in cfg.task_names_by_source().items():  # training batches move the gate statistics
            model(batches(cfg, data, tok, model, source, "train"), tasks)
    model.eval()
    path = save_bundle(tmp_path / "b", model, tok, cfg, data.label_infos, data.max_lengths, {})
    return cfg, data, tok, model, path


def batches(cfg, data, tok, model, source, split):
    dtypes = {t: model.heads[t].label_dtype for t in cfg.task_names_by_source()[source]}
    return collate(data.splits[split][source], np.arange(8), tok.pad_token_id, dtypes)


def test_round_trip_is_strict_and_exact(trained):
    cfg, data, tok, model, path = trained
    saved = set(load_file(str(path / "model.safetensors")))
    assert {k for k in model.state_dict() if k.startswith("sharing.")} <= saved
    assert any(k.endswith("stats.0.mean") for k in saved)
    loaded, heads_only = load_bundle(path).model, load_bundle(path, with_backbone=False).model
    stats = model.sharing.gate_stats()
    assert stats == loaded.sharing.gate_stats() == heads_only.sharing.gate_stats()
    assert stats["rating"] != pytest.approx([1 / len(stats["rating"])] * len(stats["rating"]))  # it was trained
    assert loaded.sharing.token_tasks == heads_only.sharing.token_tasks == {"attributes"}
    for source, tasks in cfg.task_names_by_source().items():
        batch = batches(cfg, data, tok, model, source, "validation")
        with torch.no_grad():
            want, got = model(batch, tasks), loaded(batch, tasks)
            apart = heads_only.apply_heads(model.encode(batch, model.routes[tasks[0]]), batch, tasks)
        for t in tasks:
            torch.testing.assert_close(got[t], want[t], rtol=0, atol=0)
            torch.testing.assert_close(apart[t], want[t], rtol=0, atol=0)


def test_predictor_equals_the_model_forward(trained):
    cfg, _, _, model, path = trained
    predictor = Predictor.from_bundle(path)
    for source, tasks in cfg.task_names_by_source().items():
        got = predictor.predict(tasks, [{"text": a, "text_pair": b} for a, b in RAW[source]])
        feats = predictor.pre.features(source, RAW[source])
        with torch.no_grad():
            out = model(feats.batch(), tasks)
        for t in tasks:
            want = model.heads[t].predict(out[t], word_ids=feats.word_ids, words=feats.words, texts=feats.texts)
            for g, w in zip(got[t], want):
                if "probabilities" in w:
                    assert list(g["probabilities"].values()) == pytest.approx(list(w["probabilities"].values()), abs=1e-6)
                elif "value" in w:
                    assert g["value"] == pytest.approx(w["value"], abs=1e-6)
                else:
                    assert g["tags"] == w["tags"] and w["tags"]
