"""Scalar regression (e.g. star rating as a number). Targets are standardised with the
train split's mean and std so one learning rate suits any scale."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ecomtl.tasks.base import TASK_HEADS, TaskHead, guarded_mean, is_missing, number_label

@TASK_HEADS.register("regression")
class RegressionHead(TaskHead):
    """One number per text (standardised squared error; RMSE, MAE, R²)."""

    input_kinds = ("text", "pair")
    label_dtype = torch.float32
    ignore_value = float("nan")
    selectable_metrics = {"r2": "1 - MSE / variance of the gold values (the score floors it at 0)"}
    default_metric = "r2"

    def __init__(self, hidden_size, label_info, dropout=0.1, options=None):
        super().__init__(hidden_size, label_info, dropout, options)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1)

    @classmethod
    def fit_labels(cls, values):
        arr = np.array([float(v) for v in values if not is_missing(v)], dtype=np.float64)
        if arr.size < 2:
            raise ValueError("regression needs at least 2 labelled train rows")
        return {"mean": float(arr.mean()), "std": float(arr.std() or 1.0)}

    @classmethod
    def encode_label(cls, value, info):
        v, why = number_label(value)
        return (None, why) if why else ((v - info["mean"]) / info["std"], None)

    def forward(self, encoded, batch):
        return self.out(self.dropout(encoded.pooled)).squeeze(-1)

    def loss(self, logits, labels, batch=None):
        mask = (~torch.isnan(labels)).float()
        per_item = (logits.float() - torch.nan_to_num(labels)) ** 2
        return guarded_mean(per_item, mask, logits)

    def teacher_targets(self, outputs, batch):
        """Predictions in label units: teacher and student may standardise differently."""
        return list(self._denorm(outputs.float().cpu().numpy()))

    def distill_loss(self, logits, teacher, labels, temperature, batch=None):
        """Squared error to the teacher's prediction (standardised like the labels), every
        row; no temperature."""
        target = (teacher.float() - self.label_info["mean"]) / self.label_info["std"]
        per_row = (logits.float() - target) ** 2
        return guarded_mean(per_row, torch.ones_like(per_row), logits)

    def _denorm(self, x):
        return x * self.label_info["std"] + self.label_info["mean"]

    def gold_and_pred(self, logits, labels, batch=None):
        return [
            (self._denorm(g), self._denorm(p))
            for g, p in zip(labels.tolist(), logits.float().tolist())
            if not math.isnan(g)
        ]

    @classmethod
    def metrics(cls, pairs, info, metric=None):
        if not pairs:
            return {"n": 0, "score": 0.0}
        gold, pred = np.array(pairs).T
        mse = float(((gold - pred) ** 2).mean())
        var = float(gold.var()) or 1.0
        return cls.scored({
            "n": len(pairs),
            "rmse": math.sqrt(mse),
            "mae": float(np.abs(gold - pred).mean()),
            "r2": 1 - mse / var,
        }, metric)

    def predict(self, logits, **context):
        return [{"value": self._denorm(v)} for v in logits.float().tolist()]
