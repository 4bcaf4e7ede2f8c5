"""``tasks.<t>.metric`` picks which of a head's metrics is its ``score``, and
``tasks.<t>.score_weight`` its weight in the aggregate; hand-computed values."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from ecomtl.config.load import config_from_dict, read_yaml
from ecomtl.config.schema import TaskConfig
from ecomtl.evaluation import aggregate, flatten, score_weights, selected_tasks, task_metrics, task_specs
from ecomtl.tasks import TASK_HEADS

TINY = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "tiny.yaml"

# gold 1 1 0 0 0 0 / pred 1 0 0 0 1 0: class 1 P=R=1/2 → F1 0.5; class 0 P=R=3/4 → F1 0.75
BINARY = [(1, 1), (1, 0), (0, 0), (0, 0), (0, 1), (0, 0)]


@pytest.mark.parametrize("metric, score", [(None, 0.625), ("macro_f1", 0.625), ("accuracy", 4 / 6), ("pos_f1", 0.5)])
def test_classification_score_is_the_chosen_metric(metric, score):
    cls = TASK_HEADS.get("classification")
    info = cls.fit_labels([0, 1])
    assert cls.metrics(BINARY, info, metric)["score"] == pytest.approx(score)


def test_tagging_score_is_the_chosen_metric():
    tag = TASK_HEADS.get("tagging")
    info = tag.fit_labels([["B-c", "I-c", "B-b"]])
    # gold spans (c,0,2) (b,3,4); predicted (c,0,2) (b,2,3) (b,3,4): P 2/3, R 1, F1 0.8; 3 of 4 words right
    pairs = [(["B-c", "I-c", "O", "B-b"], ["B-c", "I-c", "B-b", "B-b"])]
    scores = {m: tag.metrics(pairs, info, m)["score"] for m in (None, "f1", "precision", "recall", "token_accuracy")}
    assert scores == pytest.approx({None: 0.8, "f1": 0.8, "precision": 2 / 3, "recall": 1.0, "token_accuracy": 0.75})


def test_regression_score_is_r2_floored_at_zero():
    reg = TASK_HEADS.get("regression")
    info = reg.fit_labels([1, 5])
    # gold 1 3 5 (var 8/3): predictions off by 1, 0, 1 → MSE 2/3, R² 0.75
    assert reg.metrics([(1.0, 2.0), (3.0, 3.0), (5.0, 4.0)], info, "r2")["score"] == pytest.approx(0.75)
    worse = reg.metrics([(1.0, 5.0), (3.0, 3.0), (5.0, 1.0)], info)  # MSE 32/3: R² -3, scored 0
    assert worse["r2"] == pytest.approx(-3.0) and worse["score"] == 0.0


def test_every_head_declares_its_default_among_its_choices():
    for name in TASK_HEADS.names():
        head = TASK_HEADS.get(name)
        assert head.default_metric in head.selectable_metrics, name


def test_unknown_metric_names_the_field_and_lists_the_choices():
    with pytest.raises(ValidationError) as info:
        TaskConfig(source="queries", head="tagging", label="tags", metric="macro_f1")
    msg = str(info.value)
    assert "metric: tagging heads are scored on one of f1, precision, recall, token_accuracy; not 'macro_f1'" in msg


def test_pos_f1_on_a_three_class_task_fails_naming_the_task():
    cfg = config_from_dict(read_yaml(TINY), ["tasks.rating.metric=pos_f1"])  # valid for the head...
    cls = TASK_HEADS.get("classification")
    infos = {"rating": cls.fit_labels([1, 3, 5]), "stars": TASK_HEADS.get("regression").fit_labels([1, 5]),
             "attributes": TASK_HEADS.get("tagging").fit_labels([["B-c"]]), "match": cls.fit_labels([0, 1])}
    with pytest.raises(ValueError) as info:  # ...not for a label space of 3 classes
        task_specs(cfg, infos)
    assert str(info.value) == ("tasks.rating.metric: pos_f1 needs exactly 2 classes, but train has 3 (1, 3, 5); "
                               "use macro_f1 or accuracy")
    specs = task_specs(config_from_dict(read_yaml(TINY), ["tasks.match.metric=pos_f1"]), infos)
    assert specs["match"]["metric"] == "pos_f1" and specs["rating"]["metric"] == "macro_f1"
    metrics = task_metrics({"match": BINARY}, specs)
    assert metrics["match"]["score"] == pytest.approx(0.5)


def test_weighted_aggregate():
    metrics = {"a": {"score": 0.8}, "b": {"score": 0.5}, "c": {"score": 0.2}}
    assert aggregate(metrics) == pytest.approx(0.5)  # equal weights: the plain mean
    # (2·0.8 + 1·0.5 + 0·0.2) / 3 = 0.7
    assert aggregate(metrics, {"a": 2.0, "b": 1.0, "c": 0.0}) == pytest.approx(0.7)
    # a task without a weight weighs 1: (3·0.8 + 0.5 + 0.2) / 5 = 0.62
    assert aggregate(metrics, {"a": 3.0}) == pytest.approx(0.62)
    assert aggregate({}) == 0.0 and aggregate({"c": {"score": 0.2}}, {"c": 0.0}) == 0.0
    assert flatten(metrics, {"a": 2.0, "b": 1.0, "c": 0.0})["aggregate"] == pytest.approx(0.7)


def test_score_weights_come_from_the_config():
    cfg = config_from_dict(read_yaml(TINY), ["tasks.match.score_weight=3", "tasks.stars.score_weight=0"])
    assert score_weights(cfg) == {"rating": 1.0, "stars": 0.0, "attributes": 1.0, "match": 3.0}
    assert selected_tasks(cfg) == ["rating", "attributes", "match"]  # stars is reported, not selected on


def test_plugins_list_each_heads_metrics():
    from ecomtl.plugins import describe_all

    heads = {h["name"]: h for h in describe_all()["heads"]}
    assert heads["classification"]["metrics"]["default"] == "macro_f1"
    assert list(heads["classification"]["metrics"]["choices"]) == ["macro_f1", "accuracy", "pos_f1"]
    assert heads["tagging"]["metrics"]["default"] == "f1"
