"""BIO tag sequences → entity spans, and strict entity-level P/R/F1 (as seqeval's
strict IOB2 mode: an entity starts with B-, continues with I- of the same type; a stray
I- starts nothing)."""

from __future__ import annotations


def bio_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, start, end_exclusive) over positions of ``tags``."""
    spans, cur = [], None
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, kind = tag.partition("-")
        if cur is not None and not (prefix == "I" and kind == cur[0]):
            spans.append((cur[0], cur[1], i))
            cur = None
        if prefix == "B":
            cur = (kind, i)
    return spans


def entity_prf(golds: list[list[str]], preds: list[list[str]]) -> dict[str, float]:
    tp = n_gold = n_pred = 0
    for g, p in zip(golds, preds):
        gs, ps = set(bio_spans(g)), set(bio_spans(p))
        tp += len(gs & ps)
        n_gold += len(gs)
        n_pred += len(ps)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
