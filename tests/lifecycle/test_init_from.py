"""``train --init-from``: weights by name (strict about shapes), the bundle's label spaces,
fresh heads for new tasks, L2-SP; and ``--gate`` refusing the run's bundle for real
(Ray Train, 2 workers, ZeRO-2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ecomtl.cli import main
from ecomtl.config.load import ConfigError
from ecomtl.model.bundle import BundleError

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"

NEW_TASK = "tasks.dept={source: reviews, head: classification, label: department_name}"


def built(cfg, infos):
    from ecomtl.model.build import build_model, load_tokenizer

    torch.manual_seed(0)
    return build_model(cfg, infos, load_tokenizer(cfg.model))


def source_infos(bundle):
    return {t: s["labels"] for t, s in json.loads((Path(bundle) / "tasks.json").read_text())["tasks"].items()}


def test_weights_load_by_name_new_heads_fresh_dropped_heads_ignored(source_bundle, data_root, tmp_path, tiny_config):
    from ecomtl.lifecycle.init_from import init_label_infos, load_init_weights

    cfg = tiny_config(data_root, tmp_path, [NEW_TASK, f"training.init_from={source_bundle}"])
    del_match = {k: v for k, v in cfg.tasks.items() if k != "match"}
    cfg = cfg.model_copy(update={"tasks": del_match, "sources": {k: v for k, v in cfg.sources.items() if k != "offers"}})
    infos = init_label_infos(cfg, data_root)
    assert infos["rating"] == source_infos(source_bundle)["rating"]  # the bundle's (reversed) order, not re-fit
    assert infos["rating"]["names"] == ["5", "4", "3", "2", "1"] and len(infos["dept"]["names"]) > 2
    model = built(cfg, infos)
    before = model.state_dict()["backbone.model.embeddings.word_embeddings.weight"].clone()
    report = load_init_weights(model, source_bundle, list(source_infos(source_bundle)))
    state = model.state_dict()
    src_base = load_file(str(source_bundle / "backbone" / "model.safetensors"))
    src = load_file(str(source_bundle / "model.safetensors"))
    assert torch.equal(state["backbone.model.embeddings.word_embeddings.weight"], src_base["embeddings.word_embeddings.weight"])
    assert not torch.equal(before, src_base["embeddings.word_embeddings.weight"])  # the test can fail
    assert torch.equal(state["heads.rating.out.weight"], src["heads.rating.out.weight"])
    assert report["fresh"] == ["heads.dept.out.bias", "heads.dept.out.weight"]
    assert report["dropped"] == ["heads.match.out.bias", "heads.match.out.weight"]


def test_shape_mismatch_names_the_tensor(source_bundle, data_root, tmp_path, tiny_config):
    from ecomtl.lifecycle.init_from import load_init_weights

    cfg = tiny_config(data_root, tmp_path, ["model.tiny.hidden_size=48"])
    with pytest.raises(BundleError, match=r"training.init_from: tensor backbone\.model\.\S+ is \((\d+, )?32,?\) in .* has \((\d+, )?48,?\)"):
        load_init_weights(built(cfg, source_infos(source_bundle)), source_bundle, list(source_infos(source_bundle)))


def test_incompatible_task_or_path_fails_on_the_driver(source_bundle, data_root, tmp_path, tiny_config):
    from ecomtl.lifecycle.init_from import check_init_from

    cfg = tiny_config(data_root, tmp_path, ["tasks.rating.label=department_name", f"training.init_from={source_bundle}"])
    with pytest.raises(ConfigError, match="training.init_from: task 'rating' is a classification head on column "
                                          "'rating' in the bundle"):
        check_init_from(cfg)
    with pytest.raises(ConfigError, match="training.init_from: .* is not a complete bundle"):
        check_init_from(tiny_config(data_root, tmp_path, [f"training.init_from={tmp_path}"]))


def test_l2sp_pulls_toward_the_start(source_bundle):
    from ecomtl.lifecycle.l2sp import L2SP

    layer = torch.nn.Linear(4, 2)
    reg = L2SP(layer, {"weight"}, weight=2.0)
    assert float(reg.penalty()) == 0.0
    with torch.no_grad():
        layer.weight.add_(1.0)
    penalty = reg.penalty()
    assert float(penalty) == pytest.approx(0.5 * 2.0 * 8)  # 8 entries moved by 1
    penalty.backward()
    assert torch.allclose(layer.weight.grad, torch.full((2, 4), 2.0)) and layer.bias.grad is None
    assert reg.distance() == pytest.approx(8 ** 0.5)


@pytest.mark.integration
def test_train_init_from_continues_and_gate_refuses(source_bundle, ray_local, data_root, tmp_path, tiny_config, capsys):
    """2 steps at lr 1e-6 from the bundle: its tensors come out (almost) unchanged — far
    from the seed-0 init the run would otherwise start from; the new head is there; the
    old label space is kept; a gate the run cannot pass keeps it from promotion."""
    reference = tmp_path / "ref.json"
    reference.write_text(json.dumps({"rating": {"score": 1.0}, "match": {"score": 0.0}}))
    promoted = tmp_path / "promoted"
    code = main(["train", str(CONFIGS / "tiny.yaml"), f"data_root={data_root}", f"output.storage_path={tmp_path}",
                 f"output.bundle_dir={promoted}", NEW_TASK, "training.steps=2", "training.eval_every=2",
                 "training.eval_max_rows=16", "optim.lr=1e-6", "optim.head_lr=1e-6", "training.l2sp=0.1",
                 "distributed.num_workers=2", "distributed.zero_stage=2", "--resume", "retrain",
                 "--init-from", str(source_bundle), "--gate", str(reference), "--tolerance", "match=0.5"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "gate: REFUSED — rating" in out and "not promoted" in out
    assert not promoted.exists()
    bundle = tmp_path / "retrain" / "bundle"
    verdict = json.loads((tmp_path / "retrain" / "bundle.gate.json").read_text())
    assert verdict["passed"] is False and verdict["promoted_to"] is None
    spec = json.loads((bundle / "tasks.json").read_text())["tasks"]
    assert spec["rating"]["labels"] == source_infos(source_bundle)["rating"] and "dept" in spec
    base, src_base = (load_file(str(p / "backbone" / "model.safetensors")) for p in (bundle, source_bundle))
    heads, src_heads = (load_file(str(p / "model.safetensors")) for p in (bundle, source_bundle))
    fresh = built(tiny_config(data_root, tmp_path), source_infos(source_bundle)).state_dict()
    key = "embeddings.word_embeddings.weight"
    assert (base[key] - src_base[key]).abs().max() < 1e-4
    assert (fresh[f"backbone.model.{key}"] - src_base[key]).abs().max() > 1e-2
    assert (heads["heads.match.out.weight"] - src_heads["heads.match.out.weight"]).abs().max() < 1e-4
    assert heads["heads.dept.out.weight"].shape[0] == len(spec["dept"]["labels"]["names"])
