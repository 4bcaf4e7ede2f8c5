"""Ranking: score (query, candidate) pairs, where the candidates of one query form a
group (``sources.<s>.group``, e.g. the left offer of Abt-Buy: "find this offer's twin").

The model is a cross-encoder: each pair is encoded together and a linear layer gives
its score; the loss compares the scores within each group of the batch (the batches of a
grouped source hold whole groups, ``data.sampling.GroupedBatches``).

Losses (``options.loss``):
- ``pointwise``: binary cross-entropy of each score against relevance / max relevance;
- ``pairwise``: RankNet, log(1 + exp(-(s_i - s_j))) over the pairs of a group with
  rel_i > rel_j;
- ``listwise``: ListNet top-1, the cross-entropy between the group's relevance
  distribution (rel / sum rel) and the softmax of its scores.

Metrics are per group, then averaged over the groups that can be ranked at all: at
least one relevant candidate and at least two candidates (a group with one candidate is
always ranked right and would only inflate the figures). NDCG@k (graded gain
2^rel - 1) comes from scikit-learn; MRR and Recall@k count ties as the average position
of the tied candidates, so a constant scorer gets the chance level, not a lucky order.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn import functional as F

from ecomtl.tasks.base import TASK_HEADS, TaskHead, guarded_mean, is_missing, number_label

IGNORE_RELEVANCE = -100.0
CUTOFFS = (1, 5, 10)


class RankingOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    loss: Literal["pointwise", "pairwise", "listwise"] = Field(
        "listwise", description="pointwise BCE, pairwise RankNet, or listwise softmax (ListNet) within each group")


def same_group(group: torch.Tensor) -> torch.Tensor:
    """[n, n] bool: rows i and j belong to one group."""
    return group[:, None] == group[None, :]


def listwise_loss(scores: torch.Tensor, rel: torch.Tensor, group: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """Mean over groups with a relevant candidate of -sum_i p_i log softmax(s)_i, where
    p = rel / sum(rel) within the group (unlabelled rows take no part)."""
    both = same_group(group) & labelled[:, None] & labelled[None, :]
    masked = scores[None, :].expand(len(scores), -1).masked_fill(~both, -math.inf)
    log_softmax = scores - torch.logsumexp(masked, dim=1)  # each row against its own group
    rel = rel.clamp(min=0) * labelled
    group_total = (both.float() * rel[None, :]).sum(1)  # sum of relevance in row i's group
    target = torch.where(group_total > 0, rel / group_total.clamp(min=1e-12), torch.zeros_like(rel))
    per_row = -target * torch.where(labelled, log_softmax, torch.zeros_like(log_softmax))
    n_groups = torch.unique(group[rel > 0]).numel()  # groups with a relevant candidate
    if n_groups == 0:
        return scores.sum() * 0.0
    return per_row.sum() / n_groups


def pairwise_loss(scores: torch.Tensor, rel: torch.Tensor, group: torch.Tensor, labelled: torch.Tensor) -> torch.Tensor:
    """RankNet: mean over ordered pairs (i, j) of one group with rel_i > rel_j."""
    better = same_group(group) & labelled[:, None] & labelled[None, :] & (rel[:, None] > rel[None, :])
    if not bool(better.any()):
        return scores.sum() * 0.0
    diff = scores[:, None] - scores[None, :]
    return F.softplus(-diff)[better].mean()


def reciprocal_rank(rels: np.ndarray, scores: np.ndarray) -> float:
    """1 / the position of the best-scored relevant candidate; tied candidates that are
    not relevant count as half ahead of it (their average position)."""
    best = scores[rels > 0].max()
    ahead = np.sum(scores > best) + 0.5 * np.sum((scores == best) & (rels <= 0))
    return 1.0 / (1.0 + ahead)


def recall_at(rels: np.ndarray, scores: np.ndarray, k: int) -> float:
    """Share of the relevant candidates in the top k; a tie across the cut-off counts
    its members in proportion to the places left."""
    if k >= len(scores):
        return 1.0
    cut = np.sort(scores)[::-1][k - 1]
    above = scores > cut
    tied = scores == cut
    room = k - int(above.sum())
    relevant = rels > 0
    hits = float(np.sum(above & relevant)) + room * float(np.sum(tied & relevant)) / float(np.sum(tied))
    return hits / float(relevant.sum())


def group_metrics(groups: dict[Any, tuple[list, list]]) -> dict[str, float]:
    """NDCG@k, MRR and Recall@k averaged over rankable groups (see the module doc)."""
    from sklearn.metrics import ndcg_score

    per: dict[str, list[float]] = {"mrr": [], **{f"ndcg@{k}": [] for k in CUTOFFS},
                                   **{f"recall@{k}": [] for k in CUTOFFS}}
    for rels, scores in groups.values():
        rels, scores = np.asarray(rels, dtype=np.float64), np.asarray(scores, dtype=np.float64)
        if len(rels) < 2 or not (rels > 0).any():
            continue
        gains = np.power(2.0, rels) - 1.0
        per["mrr"].append(reciprocal_rank(rels, scores))
        for k in CUTOFFS:
            per[f"ndcg@{k}"].append(float(ndcg_score(gains[None, :], scores[None, :], k=k)))
            per[f"recall@{k}"].append(recall_at(rels, scores, k))
    out = {name: float(np.mean(v)) if v else 0.0 for name, v in per.items()}
    out["groups"] = len(per["mrr"])
    return out


def by_group(pairs: list[tuple[tuple[int, float], float]]) -> dict[int, tuple[list, list]]:
    groups: dict[int, tuple[list, list]] = {}
    for (g, rel), score in pairs:
        rels, scores = groups.setdefault(g, ([], []))
        rels.append(rel)
        scores.append(score)
    return groups


@TASK_HEADS.register("ranking")
class RankingHead(TaskHead):
    """A relevance score per (query, candidate) pair; candidates of a query compared in its group."""

    input_kinds = ("pair",)
    label_dtype = torch.float32
    ignore_value = IGNORE_RELEVANCE
    needs_groups = True
    request_fields = ("query", "candidates")
    Options = RankingOptions
    selectable_metrics = {
        "ndcg@10": "NDCG of the top 10 per group (graded gain 2^rel - 1), mean over rankable groups",
        "ndcg@5": "NDCG of the top 5 per group",
        "ndcg@1": "NDCG of the top candidate per group",
        "mrr": "mean reciprocal rank of the first relevant candidate",
        "recall@1": "share of a group's relevant candidates ranked first",
        "recall@5": "share of a group's relevant candidates in the top 5",
        "recall@10": "share of a group's relevant candidates in the top 10",
    }
    default_metric = "ndcg@10"

    def __init__(self, hidden_size, label_info, dropout=0.1, options=None):
        super().__init__(hidden_size, label_info, dropout, options)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, 1)

    @classmethod
    def fit_labels(cls, values):
        rels = []
        for v in values:
            if is_missing(v):
                continue
            try:
                rels.append(float(v))
            except (TypeError, ValueError):
                raise ValueError(f"ranking labels are relevance numbers >= 0, found {v!r}") from None
        rels = np.array(rels)
        if rels.size == 0 or not (rels > 0).any():
            raise ValueError("ranking needs relevant rows (relevance > 0) in train")
        if (rels < 0).any() or not np.isfinite(rels).all():
            raise ValueError("ranking labels are relevance numbers >= 0")
        return {"max_relevance": float(rels.max()), "graded": bool(len(np.unique(rels)) > 2)}

    @classmethod
    def encode_label(cls, value, info):
        v, why = number_label(value)
        if why:
            return None, why
        return (v, None) if v >= 0 else (None, "unknown_label")

    @classmethod
    def keep_in_group(cls, labels: np.ndarray) -> np.ndarray:
        """Rows a capped training group must keep: the relevant candidates."""
        return np.asarray(labels, dtype=np.float64) > 0

    def forward(self, encoded, batch):
        return self.out(self.dropout(encoded.pooled)).squeeze(-1)

    def loss(self, logits, labels, batch=None):
        scores = logits.float()
        labelled = labels != IGNORE_RELEVANCE
        kind = self.options.loss
        if kind == "pointwise":
            target = (labels.clamp(min=0) / self.label_info["max_relevance"]).clamp(max=1)
            per_item = F.binary_cross_entropy_with_logits(scores, target, reduction="none")
            return guarded_mean(per_item, labelled.float(), logits)
        group = batch["group"]
        rel = labels.clamp(min=0)
        if kind == "pairwise":
            return pairwise_loss(scores, rel, group, labelled)
        return listwise_loss(scores, rel, group, labelled)

    def gold_and_pred(self, logits, labels, batch=None):
        groups = batch["group"].tolist()
        return [((g, rel), s) for g, rel, s in zip(groups, labels.tolist(), logits.float().tolist())
                if rel != IGNORE_RELEVANCE]

    @classmethod
    def metrics(cls, pairs, info, metric=None):
        if not pairs:
            return {"n": 0, "score": 0.0}
        groups = by_group(pairs)
        out = {"n": len(pairs), "groups_total": len(groups)} | group_metrics(groups)
        if not out["groups"]:
            out["n"] = 0  # nothing could be ranked: the score is 0, not a mean of nothing
        return cls.scored(out, metric)

    def predict(self, logits, **context):
        return [{"score": float(s)} for s in logits.float().tolist()]

    # -- serving --------------------------------------------------------------------------
    @classmethod
    def request_model(cls, task: str, shapes, options: dict):
        """The body of ``POST /v1/tasks/{task}``: one query and 1..``max_items``
        candidates (each scored as a (query, candidate) pair: candidates count as inputs
        against the limits); the answer lists them best first."""
        from typing import Annotated

        from pydantic import BeforeValidator, create_model

        from ecomtl.serve.inputs import Request, bounded_list

        class RankRequest(Request):
            def items(self):
                return [(self.query, c) for c in self.candidates]

            def respond(self, preds):
                ranked = sorted(range(len(preds)), key=lambda i: -preds[i]["score"])
                return [{"index": i, "candidate": self.candidates[i], **preds[i]} for i in ranked]

        text_type, limits = shapes.Text, shapes.limits
        n = limits.max_items
        candidates = Annotated[list[text_type], Field(min_length=1, max_length=n),
                               BeforeValidator(bounded_list("candidates", n, "too_many_items"))]
        return create_model(
            f"{task}_request", __base__=RankRequest,
            query=(text_type, Field(description="the query (for twins: the offer whose match is sought)")),
            candidates=(candidates, Field(description=f"1-{n} candidate texts, each of 1-{limits.max_text_chars} "
                                                      "characters; answered best first with their scores")))
