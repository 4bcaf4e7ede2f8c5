"""A *trained* bundle (tiny Llama, per-task LoRA, real Ray Train + DeepSpeed): the
in-process Predictor and the HTTP app give what the training model's forward gives."""

import numpy as np
import pytest
import requests
import torch

from ecomtl.data.collate import collate
from ecomtl.data.prepare import prepare_data
from ecomtl.model.bundle import load_bundle
from ecomtl.model.predictor import Predictor
from ecomtl.train.run import train_experiment

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained_lora_bundle(ray_local, tmp_path_factory, data_root, decoder_tokenizer_dir):
    from pathlib import Path

    from ecomtl.config.load import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml", [
        f"output.storage_path={tmp_path_factory.mktemp('runs')}", f"data_root={data_root}",
        "model.backbone=decoder", f"model.pretrained={decoder_tokenizer_dir}",
        "model.tiny={family: qwen2, hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, "
        "num_key_value_heads: 2, intermediate_size: 64}",
        "model.adapter.kind=lora", "model.adapter.options={r: 4, alpha: 8}", "optim.lr=1e-2",
    ])
    return cfg, str(train_experiment(cfg, run_name="lora-serve", log=lambda *_: None).bundle)


def test_predictor_equals_training_forward(trained_lora_bundle):
    cfg, path = trained_lora_bundle
    bundle, predictor = load_bundle(path), Predictor.from_bundle(path)
    data = prepare_data(cfg, bundle.tokenizer, splits=("validation",), label_infos=bundle.label_infos,
                        max_lengths=bundle.max_lengths)
    raw = {"rating": ["Love this dress, fits perfectly", "Cheap fabric, returned it"]}
    preds = predictor.predict(["rating", "stars"], raw["rating"])
    feats = predictor.pre.features("reviews", [(t, None) for t in raw["rating"]])
    batch = feats.batch()
    with torch.no_grad():
        out = bundle.model(batch, ["rating", "stars"])
    probs = out["rating"].float().softmax(-1)
    names = bundle.label_infos["rating"]["names"]
    for i, p in enumerate(preds["rating"]):
        np.testing.assert_allclose([p["probabilities"][n] for n in names], probs[i].tolist(), rtol=0, atol=1e-6)
    # and the training collate path gives the same tensors as the served features
    split = data.splits["validation"]["reviews"]
    dtypes = {t: bundle.model.heads[t].label_dtype for t in ("rating", "stars")}
    b = collate(split, np.arange(4), bundle.tokenizer.pad_token_id, dtypes)
    with torch.no_grad():
        assert bundle.model(b, ["rating"])["rating"].shape == (4, len(names))


def test_http_equals_predictor_on_mixed_tasks(trained_lora_bundle, serve_http, app_args):
    from ray import serve

    from ecomtl.serve.app import build_app

    _, path = trained_lora_bundle
    serve.run(build_app(app_args(path)), name="lora", route_prefix="/lora")
    try:
        local = Predictor.from_bundle(path)
        texts = ["red nike running shoes", "Love this dress"]
        # a token task listed before text tasks, each with its own adapter: one pass per route
        body = {"tasks": ["attributes", "rating", "stars"], "inputs": texts}
        got = requests.post(f"{serve_http}/lora/v1/predict", json=body, timeout=60)
        assert got.status_code == 200, got.text
        want = local.predict(body["tasks"], texts)
        for t in body["tasks"]:
            for g, w in zip(got.json()["predictions"][t], want[t]):
                if "probabilities" in w:
                    np.testing.assert_allclose(list(g["probabilities"].values()), list(w["probabilities"].values()),
                                               atol=1e-5)
                elif "value" in w:
                    assert g["value"] == pytest.approx(w["value"], abs=1e-5)
                else:
                    assert g["tags"] == w["tags"]
        one = requests.post(f"{serve_http}/lora/v1/tasks/match", json={"inputs": [{"text": "a", "text_pair": "b"}]},
                            timeout=60)
        assert one.status_code == 200, one.text
        assert one.json()["predictions"][0]["label"] == local.predict(["match"], {"text": "a", "text_pair": "b"})[
            "match"][0]["label"]
    finally:
        serve.delete("lora")
