"""``ecomtl adapt``: a new head from K rows over the frozen backbone, through Ray Train.
The old heads' outputs stay bit-identical, the new head evaluates (the same score as
the adapt run measured) and serves."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ecomtl.config.load import ConfigError
from ecomtl.lifecycle.adapt import kshot_rows, load_adapt_file, merged_config

ADAPT_CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "adapt_configs"
IGNORE = -100


@pytest.mark.parametrize("path", sorted(ADAPT_CONFIGS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_adapt_config_validates(path, source_bundle):
    from ecomtl.model.bundle import load_bundle

    spec = load_adapt_file(str(path))
    cfg = merged_config(load_bundle(source_bundle, with_backbone=False).config, source_bundle, spec)
    assert set(spec.tasks) <= set(cfg.tasks) and cfg.training.init_from == str(source_bundle)


def test_kshot_sample_is_seeded_and_stratified():
    labels = [0] * 50 + [1] * 30 + [2] * 5 + [IGNORE] * 10
    rows = kshot_rows(labels, 12, seed=3, stratify=True)
    assert len(rows) == 12 and all(labels[r] != IGNORE for r in rows)
    per_class = np.bincount([labels[r] for r in rows])
    assert per_class.tolist() == [4, 4, 4]  # one per class per round
    assert kshot_rows(labels, 12, 3, True).tolist() == rows.tolist()
    assert kshot_rows(labels, 12, 4, True).tolist() != rows.tolist()
    assert len({labels[r] for r in kshot_rows(labels, 2, 0, True)}) == 2  # K < classes: distinct classes
    assert len(kshot_rows(labels, 1000, 0, True)) == 85  # every usable row


def test_bad_adapt_files_fail_naming_the_field(source_bundle, tmp_path):
    from ecomtl.model.bundle import load_bundle

    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: {x: {source: reviews, head: classification, label: class_name}}\nadapt: {stepz: 3}\n")
    with pytest.raises(ConfigError, match="adapt.stepz"):
        load_adapt_file(str(bad))
    clash = tmp_path / "clash.yaml"
    clash.write_text("tasks: {rating: {source: reviews, head: classification, label: class_name}}\n")
    with pytest.raises(ConfigError, match="tasks.rating: the bundle already has"):
        merged_config(load_bundle(source_bundle, with_backbone=False).config, source_bundle,
                      load_adapt_file(str(clash)))


def old_outputs(bundle, data_root):
    """The source bundle, its config and its validation data."""
    from ecomtl.data.prepare import prepare_data
    from ecomtl.model.bundle import load_bundle

    old = load_bundle(bundle)
    cfg = old.config
    data = prepare_data(cfg, old.tokenizer, splits=("validation",), label_infos=old.label_infos,
                        max_lengths=old.max_lengths, root=data_root)
    return old, cfg, data


@pytest.mark.integration
def test_adapt_keeps_old_heads_identical_and_new_head_evaluates_and_serves(source_bundle, ray_local, data_root,
                                                                           tmp_path):
    import requests
    from ray import serve

    from ecomtl.cli import main
    from ecomtl.data.collate import collate
    from ecomtl.evaluation import evaluate_bundle
    from ecomtl.model.bundle import load_bundle
    from ecomtl.serve.app import build_app

    out = tmp_path / "adapted"
    curve = tmp_path / "curve.json"
    assert main(["adapt", str(source_bundle), str(ADAPT_CONFIGS / "class_name.yaml"), "adapt.steps=30",
                 "--shots", "4,16", "--seeds", "2", "--out", str(out), "--curve-out", str(curve)]) == 0
    runs = json.loads(curve.read_text())["runs"]
    assert [(r["shots"], r["seed"], r["rows"]) for r in runs] == [(4, 0, 4), (4, 1, 4), (16, 0, 16), (16, 1, 16)]

    # every tensor the source had, bit for bit; the new head's added
    for name in ("model.safetensors", "backbone/model.safetensors"):
        before, after = load_file(str(source_bundle / name)), load_file(str(out / name))
        assert all(torch.equal(before[k], after[k]) for k in before), name
        assert set(after) - set(before) == ({"heads.class_name.out.weight", "heads.class_name.out.bias"}
                                            if name == "model.safetensors" else set())
    # the old heads' predictions on fixed inputs: identical
    src, cfg, data = old_outputs(source_bundle, data_root)
    new = load_bundle(out)
    for source, tasks in cfg.task_names_by_source().items():
        split = data.splits["validation"][source]
        dtypes = {t: src.model.heads[t].label_dtype for t in tasks}
        batch = collate(split, range(16), src.tokenizer.pad_token_id, dtypes)
        with torch.no_grad():
            a, b = src.model(batch, tasks), new.model(batch, tasks)
        for t in tasks:
            assert torch.equal(a[t], b[t]), t

    # the new head evaluates, to the score the adapt run measured for the written head
    scored = evaluate_bundle(str(out), data_root=data_root, bf16=False)
    written = next(r for r in runs if (r["shots"], r["seed"]) == (16, 0))
    assert scored["tasks"]["class_name"]["n"] == written["n"]
    # fp32 both; batches padded differently can flip a near-tie or two
    assert scored["tasks"]["class_name"]["score"] == pytest.approx(written["score"], abs=5e-3)
    assert json.loads((out / "metrics.json").read_text())["adapt"]["shots"] == 16

    # and serves: the Serve app built from the bundle lists and answers the new task
    port = 18000 + np.random.default_rng().integers(1000)
    serve.start(http_options={"host": "127.0.0.1", "port": int(port)})
    try:
        light = {"ray_actor_options": {"num_cpus": 0.1}, "torch_threads": 1}
        serve.run(build_app({"bundle": str(out), "ingress": light, "encoder": light, "heads": light}),
                  name="adapted", route_prefix="/")
        base = f"http://127.0.0.1:{port}"
        tasks = {t["name"] for t in requests.get(base + "/v1/tasks", timeout=60).json()["tasks"]}
        assert tasks == {"rating", "stars", "attributes", "match", "class_name"}
        r = requests.post(base + "/v1/tasks/class_name", json={"inputs": "Soft knit sweater, runs large"}, timeout=60)
        assert r.status_code == 200, r.text
        assert json.dumps(r.json()).count("label") >= 1
        names = json.loads((out / "tasks.json").read_text())["tasks"]["class_name"]["labels"]["names"]
        assert any(n in json.dumps(r.json()) for n in names)
    finally:
        serve.shutdown()
