"""Each head's label space, loss and metrics on small hand-checked cases."""

import math

import numpy as np
import pytest
import torch

from ecomtl.tasks import IGNORE, TASK_HEADS


def test_classification_labels_loss_and_metrics():
    cls = TASK_HEADS.get("classification")
    info = cls.fit_labels([5, 1, 5.0, "3", None, float("nan"), 1])
    assert info["names"] == ["1", "3", "5"] and info["counts"] == [2, 1, 2]
    assert cls.encode_label(5, info) == (2, None)
    assert cls.encode_label("", info) == (None, "missing_label")
    assert cls.encode_label(4, info) == (None, "unknown_label")

    head = cls(8, info)
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0]])
    labels = torch.tensor([0, IGNORE, 2])
    loss = head.loss(logits, labels)
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], torch.tensor([0, 2]))
    assert loss.item() == pytest.approx(expected.item())
    assert head.loss(logits, torch.full((3,), IGNORE)).item() == 0.0  # nothing labelled: zero, not NaN

    pairs = head.gold_and_pred(logits, labels)
    assert pairs == [(0, 0), (2, 2)]
    m = cls.metrics([(0, 0), (1, 2), (2, 2), (2, 2)], info)
    assert m["accuracy"] == 0.75
    # per-class F1: c0 1.0, c1 0.0, c2 0.8 → macro 0.6
    assert m["macro_f1"] == pytest.approx(0.6) and m["score"] == m["macro_f1"]
    pred = head.predict(logits)[0]
    assert pred["label"] == "1" and sum(pred["probabilities"].values()) == pytest.approx(1.0)


def test_binary_reports_positive_f1_and_balance_weights():
    cls = TASK_HEADS.get("classification")
    info = cls.fit_labels([0] * 9 + [1])
    m = cls.metrics([(1, 1), (1, 0), (0, 0), (0, 1)], info)
    assert m["pos_f1"] == pytest.approx(0.5)
    head = cls(4, info, options={"class_balance": "inverse"})
    w = head.class_weights
    assert w[1] / w[0] == pytest.approx(9.0)
    assert (w * torch.tensor([9.0, 1.0])).sum().item() == pytest.approx(10.0)  # mean weight 1 over train


def test_regression_standardises_and_reports_rmse():
    reg = TASK_HEADS.get("regression")
    info = reg.fit_labels([1, 2, 3, 4, 5, None])
    assert info["mean"] == 3 and info["std"] == pytest.approx(math.sqrt(2))
    value, _ = reg.encode_label(5, info)
    assert value == pytest.approx(2 / math.sqrt(2))
    assert reg.encode_label("five", info) == (None, "unknown_label")
    head = reg(4, info)
    logits = torch.tensor([0.0, 1.0])
    labels = torch.tensor([0.0, float("nan")])
    assert head.loss(logits, labels).item() == 0.0  # only the labelled row counts
    assert head.gold_and_pred(logits, labels) == [(3.0, 3.0)]
    m = reg.metrics([(1.0, 2.0), (3.0, 3.0), (5.0, 4.0)], info)
    assert m["rmse"] == pytest.approx(math.sqrt(2 / 3)) and m["r2"] == pytest.approx(1 - (2 / 3) / (8 / 3))
    assert head.predict(torch.tensor([0.0]))[0]["value"] == pytest.approx(3.0)


def test_tagging_label_space_loss_and_entity_metrics():
    tag = TASK_HEADS.get("tagging")
    info = tag.fit_labels([["B-color", "O"], ["B-brand", "I-brand"]])
    assert info["names"] == ["O", "B-brand", "I-brand", "B-color", "I-color"]
    assert tag.encode_label(["O", "B-size"], info) == (None, "unknown_label")
    with pytest.raises(ValueError, match="not BIO"):
        tag.fit_labels([["X-color"]])
    head = tag(4, info)
    # 1 example, 4 token positions: [CLS] w0 w0-subtoken w1 ; labels only on first sub-tokens
    labels = torch.tensor([[IGNORE, 1, IGNORE, 2]])
    logits = torch.full((1, 4, 5), -5.0)
    logits[0, 1, 1] = logits[0, 3, 2] = 5.0
    logits[0, 2, 3] = 5.0  # ignored position predicts something else: must not matter
    pairs = head.gold_and_pred(logits, labels)
    assert pairs == [(["B-brand", "I-brand"], ["B-brand", "I-brand"])]
    assert tag.metrics(pairs, info)["f1"] == 1.0
    assert head.loss(logits, labels).item() < 0.01


def test_tagging_predict_gives_char_offsets():
    tag = TASK_HEADS.get("tagging")
    info = tag.fit_labels([["B-color", "B-type", "I-type"]])
    head = tag(4, info)
    names = info["names"]
    text = "red  running shoes"
    words = [(0, 3), (5, 12), (13, 18)]
    word_ids = [[None, 0, 1, 1, 2, None]]
    want = ["O", "B-color", "B-type", "O", "I-type", "O"]
    logits = torch.full((1, 6, len(names)), -5.0)
    for t, name in enumerate(want):
        logits[0, t, names.index(name)] = 5.0
    out = head.predict(logits, word_ids=word_ids, words=[words], texts=[text])[0]
    assert out["attributes"] == [
        {"type": "color", "text": "red", "start": 0, "end": 3},
        {"type": "type", "text": "running shoes", "start": 5, "end": 18},
    ]
