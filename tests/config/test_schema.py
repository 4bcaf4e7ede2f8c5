from pathlib import Path

import pytest

from ecomtl.config.load import ConfigError, apply_overrides, config_from_dict, load_config, read_yaml

CONFIGS = Path(__file__).resolve().parents[2] / "jobs" / "configs"


def base() -> dict:
    return read_yaml(CONFIGS / "tiny.yaml")


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.rglob("*.yaml") if "sweep" not in p.name), ids=lambda p: p.name)
def test_every_shipped_experiment_config_validates(path):
    cfg = load_config(path)
    assert cfg.tasks


def err(data: dict, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data, overrides)
    return str(info.value)


def test_unknown_key_names_the_field():
    assert "training.stepz" in err(base(), ["training.stepz=3"])


def test_bad_value_names_the_field():
    msg = err(base(), ["optim.lr=-1"])
    assert "optim.lr" in msg and "greater than 0" in msg


def test_unknown_head_lists_known_heads():
    msg = err(base(), ["tasks.rating.head=ranker"])
    assert "tasks.rating.head" in msg and "classification" in msg and "tagging" in msg


def test_unknown_source_is_named():
    msg = err(base(), ["tasks.rating.source=nowhere"])
    assert "tasks.rating.source" in msg and "nowhere" in msg


def test_head_and_input_kind_must_fit():
    msg = err(base(), ["tasks.attributes.head=classification"])
    assert "tasks.attributes.head" in msg and "tokens" in msg


def test_text_xor_tokens():
    data = base()
    data["sources"]["queries"]["text"] = ["tokens"]
    assert "exactly one of 'text'" in err(data)


def test_path_needs_split_placeholder():
    assert "{split}" in err(base(), ["sources.reviews.path=/data/reviews.csv"])


def test_zero_stage_range_and_unknown_sampler():
    assert "distributed.zero_stage" in err(base(), ["distributed.zero_stage=4"])
    assert "round_robin" in err(base(), ["sampling.kind=zipf"])


def test_head_options_are_typed_by_the_head():
    # regression declares no options: an option meant for classification is refused, by name
    assert "tasks.stars.options.class_balance" in err(base(), ["tasks.stars.options={class_balance: sqrt}"])
    assert "tasks.rating.options.class_balance" in err(base(), ["tasks.rating.options={class_balance: cubic}"])


def test_backbone_adapter_and_pooling_are_validated():
    assert "unknown backbone 'rnn'" in err(base(), ["model.backbone=rnn"])
    assert "model.pooling" in err(base(), ["model.pooling=last"])  # an encoder pools by mean or cls
    assert "unknown adapter 'prefix'" in err(base(), ["model.adapter.kind=prefix"])
    assert "model.adapter.options.r" in err(base(), ["model.adapter.kind=lora", "model.adapter.options={r: 0}"])
    assert "freeze_base" in err(base(), ["model.adapter.kind=lora",
                                         "model.adapter.options={mode: per_task, freeze_base: false}"])


def test_overrides_parse_yaml_types_and_reject_bad_syntax():
    data = apply_overrides({"a": {"b": 1}}, ["a.b=2.5", "a.c=[1, 2]", "d=null"])
    assert data == {"a": {"b": 2.5, "c": [1, 2]}, "d": None}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["noequals"])


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(CONFIGS / "nope.yaml")


def test_data_root_env(monkeypatch, tmp_path):
    from ecomtl.config.schema import resolve_data_root

    monkeypatch.setenv("ECOMTL_DATA_ROOT", str(tmp_path))
    assert resolve_data_root() == str(tmp_path)
    assert resolve_data_root("/explicit") == "/explicit"


def test_per_source_batch_size_is_validated_and_defaults_to_training():
    cfg = config_from_dict(base(), ["sources.queries.batch_size=64"])
    assert cfg.sources["queries"].batch_size == 64 and cfg.sources["reviews"].batch_size is None
    assert "sources.queries.batch_size" in err(base(), ["sources.queries.batch_size=0"])


def test_task_metric_defaults_to_the_heads_and_is_checked_against_its_list():
    cfg = config_from_dict(base())
    assert {t: c.metric for t, c in cfg.tasks.items()} == {"rating": "macro_f1", "stars": "r2", "attributes": "f1",
                                                           "match": "macro_f1"}
    assert config_from_dict(base(), ["tasks.match.metric=pos_f1"]).tasks["match"].metric == "pos_f1"
    msg = err(base(), ["tasks.stars.metric=accuracy"])
    assert "tasks.stars.metric: regression heads are scored on one of r2; not 'accuracy'" in msg


def test_score_weight_is_non_negative_and_some_task_counts():
    assert config_from_dict(base(), ["tasks.stars.score_weight=0"]).tasks["stars"].score_weight == 0.0
    assert "tasks.match.score_weight" in err(base(), ["tasks.match.score_weight=-1"])
    none = [f"tasks.{t}.score_weight=0" for t in ("rating", "stars", "attributes", "match")]
    assert "tasks.score_weight: every task has 0" in err(base(), none)


@pytest.mark.parametrize("name", ["demo.yaml", "llm_demo.yaml", "ecommerce.yaml"])
def test_shipped_configs_score_match_by_positive_class_f1(name):
    # macro-F1 hid a collapsed positive class on the demo (issue 12)
    assert load_config(CONFIGS / name).tasks["match"].metric == "pos_f1"
