"""Single-label classification of one text or a text pair (e.g. product matching)."""

from __future__ import annotations

from typing import Any, Literal, Optional

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from ecomtl.tasks.base import IGNORE, TASK_HEADS, TaskHead, guarded_mean, is_missing


def label_key(value: Any) -> str:
    """Labels are named by strings; 5, 5.0 and "5" are the same label."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _sort_key(name: str):
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


class ClassificationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    class_balance: Literal["none", "sqrt", "inverse"] = Field(
        "none", description="weight classes by train frequency^-1/2 or ^-1 (helps macro-F1)")


@TASK_HEADS.register("classification")
class ClassificationHead(TaskHead):
    """One label per text or text pair (softmax over the train split's classes)."""

    input_kinds = ("text", "pair")
    Options = ClassificationOptions
    selectable_metrics = {
        "macro_f1": "F1 averaged over classes (every class counts the same)",
        "accuracy": "share of examples with the right class",
        "pos_f1": "binary only: F1 of the positive class, the second label in sorted order (1 of 0/1)",
    }
    default_metric = "macro_f1"

    def __init__(self, hidden_size: int, label_info: dict, dropout: float = 0.1, options: Optional[dict] = None):
        super().__init__(hidden_size, label_info, dropout, options)
        class_balance = self.options.class_balance
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, len(label_info["names"]))
        weights = None
        if class_balance != "none":
            # Rare classes count more, so macro-F1 is not sacrificed to the majority class.
            counts = torch.tensor(label_info["counts"], dtype=torch.float32).clamp(min=1)
            weights = counts.pow(-0.5 if class_balance == "sqrt" else -1.0)
            weights = weights / (weights * counts).sum() * counts.sum()  # mean weight 1 over train
        self.register_buffer("class_weights", weights, persistent=False)

    @classmethod
    def fit_labels(cls, values: list) -> dict:
        keys = [label_key(v) for v in values if not is_missing(v)]
        names = sorted(set(keys), key=_sort_key)
        if len(names) < 2:
            raise ValueError(f"classification needs at least 2 labels in train, found {names}")
        counts = {n: 0 for n in names}
        for k in keys:
            counts[k] += 1
        return {"names": names, "counts": [counts[n] for n in names]}

    @classmethod
    def check_metric(cls, metric, info):
        names = info["names"]
        if metric == "pos_f1" and len(names) != 2:
            raise ValueError(f"pos_f1 needs exactly 2 classes, but train has {len(names)} "
                             f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''}); "
                             "use macro_f1 or accuracy")

    @classmethod
    def encode_label(cls, value, info) -> tuple[Optional[int], Optional[str]]:
        if is_missing(value):
            return None, "missing_label"
        key = label_key(value)
        try:
            return info["names"].index(key), None
        except ValueError:
            return None, "unknown_label"

    def forward(self, encoded, batch):
        return self.out(self.dropout(encoded.pooled))

    def loss(self, logits, labels, batch=None):
        mask = (labels != IGNORE).float()
        per_item = F.cross_entropy(logits.float(), labels.clamp(min=0), weight=self.class_weights,
                                   reduction="none")
        return guarded_mean(per_item, mask, logits)

    def gold_and_pred(self, logits, labels, batch=None):
        pred = logits.argmax(-1).tolist()
        return [(g, p) for g, p in zip(labels.tolist(), pred) if g != IGNORE]

    @classmethod
    def metrics(cls, pairs, info, metric=None):
        if not pairs:
            return {"n": 0, "score": 0.0}
        gold, pred = np.array([g for g, _ in pairs]), np.array([p for _, p in pairs])
        labels = list(range(len(info["names"])))
        out = {
            "n": len(pairs),
            "accuracy": float(accuracy_score(gold, pred)),
            "macro_f1": float(f1_score(gold, pred, labels=labels, average="macro", zero_division=0)),
        }
        if len(labels) == 2:
            out["pos_f1"] = float(f1_score(gold, pred, pos_label=1, average="binary", zero_division=0))
        return cls.scored(out, metric)

    def predict(self, logits, **context):
        probs = logits.float().softmax(-1)
        names = self.label_info["names"]
        out = []
        for row in probs.tolist():
            best = int(np.argmax(row))
            out.append({"label": names[best], "probabilities": dict(zip(names, row))})
        return out
