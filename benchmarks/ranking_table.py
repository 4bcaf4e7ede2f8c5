"""The ranking head against the plain alternatives on the same validation groups:

    python benchmarks/ranking_table.py BUNDLE [--ranking twins] [--classifier match] [--split validation]

Rows: the bundle's ranking head; the bundle's pair classifier on the same source with its
positive-class probability used as the ranking score; BM25 (``rank_bm25``) of each
candidate against its query. Every row is scored by the ranking head's own metrics
(``tasks/ranking.py``: rankable groups only) on the same rows and groups.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from ecomtl.baseline import bm25_scores  # noqa: E402
from ecomtl.data.collate import collate  # noqa: E402
from ecomtl.data.prepare import prepare_data, select_rows  # noqa: E402
from ecomtl.data.sources import open_split  # noqa: E402
from ecomtl.model.bundle import load_bundle  # noqa: E402
from ecomtl.tasks.ranking import IGNORE_RELEVANCE  # noqa: E402

COLUMNS = ("ndcg@10", "mrr", "recall@1", "ndcg@1", "groups")


@torch.no_grad()
def model_scores(bundle, split, tasks: list[str], batch_size: int = 64) -> dict[str, np.ndarray]:
    """Per-row outputs of ``tasks`` over the whole split, in row order."""
    model = bundle.model.eval()
    dtypes = {t: model.heads[t].label_dtype for t in tasks}
    out = {t: [] for t in tasks}
    for start in range(0, len(split), batch_size):
        rows = np.arange(start, min(start + batch_size, len(split)))
        batch = collate(split, rows, bundle.tokenizer.pad_token_id, dtypes)
        logits = model(batch, tasks)
        for t in tasks:
            out[t].append(logits[t].float())
    return {t: torch.cat(v) for t, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundle")
    ap.add_argument("--ranking", default="twins")
    ap.add_argument("--classifier", default="match")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--data-root")
    args = ap.parse_args()

    bundle = load_bundle(args.bundle)
    cfg = bundle.config
    root = args.data_root or cfg.resolved_data_root()
    source = cfg.tasks[args.ranking].source
    data = prepare_data(cfg, bundle.tokenizer, splits=(args.split,), label_infos=bundle.label_infos,
                        max_lengths=bundle.max_lengths, root=root)
    split = data.splits[args.split][source]
    head = type(bundle.model.heads[args.ranking])
    info, metric = bundle.label_infos[args.ranking], cfg.tasks[args.ranking].metric
    labels = split.labels[args.ranking]
    gold = [(int(g), float(y)) for g, y in zip(split.groups, labels)]
    tasks = [args.ranking] + ([args.classifier] if args.classifier in cfg.tasks else [])
    outs = model_scores(bundle, split, tasks)
    rows = {f"ranking head `{args.ranking}`": outs[args.ranking].tolist()}
    if args.classifier in outs:
        names = bundle.label_infos[args.classifier]["names"]
        rows[f"classifier `{args.classifier}` P({names[-1]})"] = outs[args.classifier].softmax(-1)[:, -1].tolist()
    # the same rows the model scored: the bad-row policy of training picks them
    raw = open_split(source, cfg, root, args.split)
    texts, pairs, *_ = select_rows(source, cfg, raw.rows(), len(raw), bundle.label_infos)
    assert len(texts) == len(split), "BM25 must score the rows the model scored"
    rows["BM25 (rank_bm25, Okapi)"] = bm25_scores(list(zip(texts, pairs)))
    print(f"ranking `{args.ranking}` on {args.split} ({source}: {len(split)} rows, "
          f"{int(split.groups.max()) + 1} groups); metrics over groups with a match among >= 2 candidates")
    print("| scorer | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, scores in rows.items():
        pairs_ = [((g, y), s) for (g, y), s in zip(gold, scores) if y != IGNORE_RELEVANCE]
        m = head.metrics(pairs_, info, metric)
        print(f"| {name} | " + " | ".join(str(m[c]) if c == "groups" else f"{m[c]:.4f}" for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
