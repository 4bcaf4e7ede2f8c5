"""Scoring: per-task metrics and the aggregate used for model selection, for the
training loop (sharded across ranks) and for a bundle on any split."""

from __future__ import annotations

import math
from typing import Mapping, Optional

import numpy as np
import torch

from ecomtl.data.collate import collate
from ecomtl.data.prepare import PreparedSplit
from ecomtl.model.multitask import to_device
from ecomtl.tasks import TASK_HEADS

AGGREGATE = "aggregate"


@torch.no_grad()
def predict_pairs(
    model,
    split: PreparedSplit,
    tasks: list[str],
    rows: np.ndarray,
    batch_size: int,
    pad_id: int,
    device,
    n_batches: Optional[int] = None,
    autocast_dtype: Optional[torch.dtype] = None,
) -> dict[str, list]:
    """(gold, prediction) pairs of ``tasks`` over ``rows``. With ``n_batches`` larger
    than needed, extra forward passes run on a filler batch whose output is dropped:
    under ZeRO-3 every rank must call the model the same number of times."""
    label_dtypes = {t: model.heads[t].label_dtype for t in tasks}
    needed = math.ceil(len(rows) / batch_size)
    n_batches = max(needed, n_batches or 0)
    out = {t: [] for t in tasks}
    was_training = model.training
    model.eval()
    for b in range(n_batches):
        chunk = rows[b * batch_size:(b + 1) * batch_size]
        filler = len(chunk) == 0
        if filler:
            chunk = np.array([0])
        batch = to_device(collate(split, chunk, pad_id, label_dtypes), device)
        with torch.autocast(device_type=torch.device(device).type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(batch, tasks)
        for t in tasks:
            head = model.heads[t]
            if filler and not head.needs_backbone:
                continue
            # a decoding head decodes on a filler batch too (synced steps under ZeRO-3), dropped here
            pairs = head.gold_and_pred(logits[t].float().cpu(), batch["labels"][t].cpu(), batch)
            if not filler:
                out[t].extend(pairs)
    model.train(was_training)
    return out


def eval_rows(split: PreparedSplit, max_rows: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """Rows to score (a fixed random subset when capped), ordered by length so that
    batches need little padding."""
    rows = np.arange(len(split))
    if max_rows and max_rows < len(rows):
        rng = np.random.default_rng(seed)
        if split.groups is None:
            rows = rng.choice(rows, size=max_rows, replace=False)
        else:  # whole groups (ranking scores a group's candidates together) up to ~max_rows
            order = rng.permutation(int(split.groups.max()) + 1)
            sizes = np.bincount(split.groups)[order]
            chosen = order[:max(1, int(np.searchsorted(np.cumsum(sizes), max_rows, side="right")))]
            rows = rows[np.isin(split.groups, chosen)]
    lengths = split.lengths()[rows]
    return rows[np.argsort(lengths, kind="stable")]


def task_specs(cfg, label_infos: dict[str, dict]) -> dict[str, dict]:
    """What scoring needs of each task of ``cfg``: ``{"head", "labels", "metric"}``.
    The metric is checked against the label space here, once it is known: a pos_f1 on a
    3-class task fails before training, naming the task."""
    specs = {}
    for t, task in cfg.tasks.items():
        try:
            TASK_HEADS.get(task.head).check_metric(task.metric, label_infos[t])
        except ValueError as err:
            raise ValueError(f"tasks.{t}.metric: {err}") from None
        specs[t] = {"head": task.head, "labels": label_infos[t], "metric": task.metric}
    return specs


def task_metrics(pairs: dict[str, list], specs: dict[str, dict]) -> dict[str, dict]:
    """``specs[task] = {"head": ..., "labels": ..., "metric": ...}`` (see ``task_specs``;
    without ``metric`` the head's default is the score) → per-task metrics."""
    return {t: TASK_HEADS.get(specs[t]["head"]).metrics(p, specs[t]["labels"], specs[t].get("metric"))
            for t, p in pairs.items()}


def score_weights(cfg) -> dict[str, float]:
    """Each task's weight in the aggregate (``tasks.<t>.score_weight``)."""
    return {t: task.score_weight for t, task in cfg.tasks.items()}


def selected_tasks(cfg) -> list[str]:
    """The tasks selected on (score_weight > 0): the aggregate's, and the multi-objective
    sweep's objectives and Pareto front."""
    return [t for t, w in score_weights(cfg).items() if w > 0]


def aggregate(metrics: dict[str, dict], weights: Optional[Mapping[str, float]] = None) -> float:
    """The model-selection score: the weighted mean of the tasks' ``score`` (each in
    [0, 1], so the aggregate is too); a task missing from ``weights`` (or no
    ``weights``) weighs 1. Every aggregate (periodic evaluation, early stopping,
    checkpoint ranking, bundle scoring, the sweep) comes from here."""
    w = {t: 1.0 if weights is None else float(weights.get(t, 1.0)) for t in metrics}
    total = sum(w.values())
    return sum(w[t] * m["score"] for t, m in metrics.items()) / total if total else 0.0


def flatten(metrics: dict[str, dict], weights: Optional[Mapping[str, float]] = None) -> dict[str, float]:
    """``{"rating/macro_f1": ..., ..., "aggregate": ...}`` for Ray reports and tables."""
    flat = {f"{t}/{k}": v for t, m in metrics.items() for k, v in m.items()}
    flat[AGGREGATE] = aggregate(metrics, weights)
    return flat


def evaluate_bundle(bundle_path: str, data_root: Optional[str] = None, split: str = "validation",
                    batch_size: int = 64, max_rows: Optional[int] = None, device: str = "cpu",
                    bf16: Optional[bool] = None, precision: str = "fp32") -> dict:
    """Score a bundle on ``{root}/…/{split}`` files laid out like the training data.
    ``bf16`` None: bf16 autocast where the hardware runs it natively (metrics move in
    the 4th decimal at most; pass False for bit-exact fp32). ``precision``: the
    backbone's serving precision (``model/precision.py``; not fp32 turns autocast off:
    the weights themselves are then what is measured)."""
    from ecomtl.train.deepspeed_config import cpu_supports_bf16

    from ecomtl.data.prepare import prepare_data
    from ecomtl.model.bundle import load_bundle

    from ecomtl.model.precision import apply_precision

    bundle = load_bundle(bundle_path, device=device)
    apply_precision(bundle.model, precision, device)
    if bf16 is None:
        bf16 = device.startswith("cuda") or cpu_supports_bf16()
    autocast = torch.bfloat16 if bf16 else None
    if precision != "fp32":  # the heads read half-precision encodings through autocast; int8 runs as is
        autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    cfg = bundle.config
    root = data_root or cfg.resolved_data_root()
    data = prepare_data(cfg, bundle.tokenizer, splits=(split,), label_infos=bundle.label_infos,
                        max_lengths=bundle.max_lengths, root=root)
    specs = task_specs(cfg, bundle.label_infos)
    pairs = {}
    for source, tasks in cfg.task_names_by_source().items():
        part = data.splits[split][source]
        rows = eval_rows(part, max_rows)
        pairs.update(predict_pairs(bundle.model, part, tasks, rows, batch_size,
                                   bundle.tokenizer.pad_token_id, device, autocast_dtype=autocast))
    metrics = task_metrics(pairs, specs)
    out = {"bundle": str(bundle.path), "data_root": root, "split": split,
           "tasks": metrics, AGGREGATE: aggregate(metrics, score_weights(cfg)), "data_report": data.report()[split]}
    gates = gate_report(bundle.model.sharing)
    return out | ({"gates": gates} if gates else {})


def gate_report(sharing) -> dict[str, dict[str, float]]:
    """task → {expert: mean gate weight in training} of a soft-sharing layer (MMoE,
    PLE): which experts each task leans on. Empty for hard sharing."""
    labels = sharing.gate_labels()
    return {t: dict(zip(labels, weights)) for t, weights in sharing.gate_stats().items()}
