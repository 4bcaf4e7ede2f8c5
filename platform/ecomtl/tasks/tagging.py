"""Token tagging with BIO labels (attribute extraction from queries and titles).

Words come pre-tokenised; each word's label sits on its first sub-token and the other
sub-tokens are ignored (the usual first-sub-token scheme). Metrics are strict
entity-level precision/recall/F1 over words."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ecomtl.tasks.base import IGNORE, TASK_HEADS, TaskHead, guarded_mean, is_missing, soft_kl
from ecomtl.tasks.spans import bio_spans, entity_prf


@TASK_HEADS.register("tagging")
class TaggingHead(TaskHead):
    """BIO tags over pre-split words (attribute extraction); strict entity P/R/F1."""

    input_kinds = ("tokens",)
    level = "token"
    selectable_metrics = {
        "f1": "strict entity-level F1 (type and word span both exact)",
        "precision": "share of predicted entities that are gold entities",
        "recall": "share of gold entities predicted",
        "token_accuracy": "share of words with the right BIO tag",
    }
    default_metric = "f1"

    def __init__(self, hidden_size, label_info, dropout=0.1, options=None):
        super().__init__(hidden_size, label_info, dropout, options)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, len(label_info["names"]))

    @classmethod
    def fit_labels(cls, values):
        kinds = set()
        for tags in values:
            if is_missing(tags):
                continue
            for tag in tags:
                prefix, _, kind = tag.partition("-")
                if prefix in ("B", "I") and kind:
                    kinds.add(kind)
                elif tag != "O":
                    raise ValueError(f"tag {tag!r} is not BIO (O, B-type, I-type)")
        names = ["O"] + [f"{p}-{k}" for k in sorted(kinds) for p in ("B", "I")]
        return {"names": names, "types": sorted(kinds)}

    @classmethod
    def encode_label(cls, value, info) -> tuple[Optional[list[int]], Optional[str]]:
        if value is None or len(value) == 0:
            return None, "missing_label"
        index = {n: i for i, n in enumerate(info["names"])}
        try:
            return [index[t] for t in value], None
        except KeyError:
            return None, "unknown_label"

    def forward(self, encoded, batch):
        return self.out(self.dropout(encoded.hidden))

    def loss(self, logits, labels, batch=None):
        flat_labels = labels.reshape(-1)
        mask = (flat_labels != IGNORE).float()
        per_item = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), flat_labels.clamp(min=0), reduction="none"
        )
        return guarded_mean(per_item, mask, logits)

    def teacher_targets(self, outputs, batch):
        """Each row's [tokens, tags] logits, without the batch's padding."""
        lengths = batch["attention_mask"].sum(1).tolist()
        return [row[:n] for row, n in zip(outputs.float().cpu().numpy(), lengths)]

    def distill_loss(self, logits, teacher, labels, temperature, batch=None):
        """Per token, over the labelled first sub-tokens only (the ones ``loss`` and the
        metrics read)."""
        per_token = soft_kl(logits, teacher, temperature)
        return guarded_mean(per_token, (labels != IGNORE).float(), logits)

    def gold_and_pred(self, logits, labels, batch=None):
        names = self.label_info["names"]
        pred = logits.argmax(-1)
        out = []
        for g_row, p_row in zip(labels.tolist(), pred.tolist()):
            keep = [(g, p) for g, p in zip(g_row, p_row) if g != IGNORE]
            if keep:
                out.append(([names[g] for g, _ in keep], [names[p] for _, p in keep]))
        return out

    @classmethod
    def metrics(cls, pairs, info, metric=None):
        if not pairs:
            return {"n": 0, "score": 0.0}
        prf = entity_prf([g for g, _ in pairs], [p for _, p in pairs])
        words = sum(len(g) for g, _ in pairs)
        correct = sum(a == b for g, p in pairs for a, b in zip(g, p))
        return cls.scored({"n": len(pairs), **prf, "token_accuracy": correct / words}, metric)

    def predict(self, logits, *, word_ids=None, words=None, **context):
        """Spans with type, text and character offsets in the original string.

        ``word_ids[i][t]`` maps token t of example i to its word (None for special
        tokens); ``words[i]`` lists (start, end) character offsets of each word and
        ``context['texts'][i]`` is the original string."""
        names = self.label_info["names"]
        texts = context["texts"]
        pred = logits.argmax(-1).tolist()
        out = []
        for i, row in enumerate(pred):
            word_tags: dict[int, str] = {}
            for t, w in enumerate(word_ids[i]):
                if w is not None and w not in word_tags:
                    word_tags[w] = names[row[t]]
            tags = [word_tags.get(w, "O") for w in range(len(words[i]))]
            spans = []
            for kind, a, b in bio_spans(tags):
                start, end = words[i][a][0], words[i][b - 1][1]
                spans.append({"type": kind, "text": texts[i][start:end], "start": start, "end": end})
            out.append({"attributes": spans, "tags": tags})
        return out
