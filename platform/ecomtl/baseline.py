"""The plain alternative every head must beat: TF-IDF + logistic regression (ridge for
regression, per-word logistic regression over word + context features for tagging),
trained on the same train split, scored with the same metrics on validation. Heads that
rank the rows of a group get BM25 instead (``rank_bm25``): each candidate scored against
its query, with term statistics over every candidate of the split, no training."""

from __future__ import annotations

import re

import numpy as np

from ecomtl.config.schema import ExperimentConfig
from ecomtl.data.prepare import _inputs, fit_label_infos
from ecomtl.data.sources import open_split
from ecomtl.tasks import TASK_HEADS
from ecomtl.tasks.base import IGNORE, is_missing


def _rows(cfg: ExperimentConfig, source: str, root: str, split: str, label_infos: dict):
    """Texts (pairs joined with a separator, or word lists) and encoded labels per task,
    with the same skipping rules as training."""
    src = cfg.sources[source]
    raw = open_split(source, cfg, root, split)
    batch = raw.rows()
    tasks = cfg.task_names_by_source()[source]
    texts, labels = [], {t: [] for t in tasks}
    pairs, groups = [], []
    for i in range(len(raw)):
        text, pair = _inputs(src, batch, i)
        if text is None or (src.group and is_missing(batch[src.group][i])):
            continue
        texts.append(text if pair is None else f"{text} [SEP] {pair}")
        pairs.append((text, pair))
        groups.append(str(batch[src.group][i]) if src.group else None)
        for t in tasks:
            value, _ = TASK_HEADS.get(cfg.tasks[t].head).encode_label(batch[cfg.tasks[t].label][i], label_infos[t])
            labels[t].append(value)
    return texts, labels, pairs, groups


WORDS = re.compile(r"\w+")


def bm25_scores(pairs: list[tuple[str, str]]) -> list[float]:
    """BM25 (Okapi) of each (query, candidate): the candidates of every pair are the
    collection (IDF and length norms over all of them)."""
    from rank_bm25 import BM25Okapi

    tokens = lambda text: WORDS.findall(text.lower())  # noqa: E731
    docs = list(dict.fromkeys(c for _, c in pairs))
    index = {d: i for i, d in enumerate(docs)}
    bm25 = BM25Okapi([tokens(d) for d in docs])
    out = []
    for query, cand in pairs:
        out.append(float(bm25.get_batch_scores(tokens(query), [index[cand]])[0]))
    return out


def ranking_pairs(scores: list[float], labels: list, groups: list) -> list:
    """A ranking head's (gold, prediction) pairs from any per-row scores."""
    from ecomtl.data.prepare import number_groups

    ids = number_groups(groups)
    return [((int(g), y), s) for g, y, s in zip(ids, labels, scores) if y is not None]


def _word_features(words: list[str], i: int) -> dict:
    w = words[i].lower()
    feats = {"w=" + w: 1, "suf3=" + w[-3:]: 1, "digit": float(any(c.isdigit() for c in w)), "pos": i / 10}
    feats["prev=" + (words[i - 1].lower() if i else "<s>")] = 1
    feats["next=" + (words[i + 1].lower() if i + 1 < len(words) else "</s>")] = 1
    return feats


def tfidf_baseline(cfg: ExperimentConfig, root: str | None = None) -> dict[str, dict]:
    from sklearn.feature_extraction import DictVectorizer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline, make_union

    root = root or cfg.resolved_data_root()
    infos = fit_label_infos(cfg, root)
    out = {}
    for source, tasks in cfg.task_names_by_source().items():
        train_x, train_y, _, _ = _rows(cfg, source, root, "train", infos)
        val_x, val_y, val_pairs, val_groups = _rows(cfg, source, root, "validation", infos)
        bm25 = None
        for t in tasks:
            head = TASK_HEADS.get(cfg.tasks[t].head)
            if head.needs_groups:
                bm25 = bm25 or bm25_scores(val_pairs)
                out[t] = head.metrics(ranking_pairs(bm25, val_y[t], val_groups), infos[t], cfg.tasks[t].metric)
                continue
            if head.level == "token":
                vec = DictVectorizer()
                ys = [y for ws, tags in zip(train_x, train_y[t]) if tags is not None for y in tags]
                xs = [f for ws, tags in zip(train_x, train_y[t]) if tags is not None for f in (_word_features(ws, i) for i in range(len(ws)))]
                clf = LogisticRegression(max_iter=300, C=5.0).fit(vec.fit_transform(xs), ys)
                names = infos[t]["names"]
                pairs = []
                for ws, tags in zip(val_x, val_y[t]):
                    if tags is None:
                        continue
                    pred = clf.predict(vec.transform([_word_features(ws, i) for i in range(len(ws))]))
                    pairs.append(([names[g] for g in tags], [names[p] for p in pred]))
                out[t] = head.metrics(pairs, infos[t], cfg.tasks[t].metric)
                continue
            keep = [i for i, y in enumerate(train_y[t]) if y is not None]
            features = make_union(
                TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=3, sublinear_tf=True, max_features=200_000),
            )
            if head.label_dtype.is_floating_point:
                model = make_pipeline(features, Ridge(alpha=1.0))
            else:
                model = make_pipeline(features, LogisticRegression(max_iter=1000, C=4.0, class_weight="balanced"))
            model.fit([train_x[i] for i in keep], [train_y[t][i] for i in keep])
            vkeep = [i for i, y in enumerate(val_y[t]) if y is not None]
            pred = model.predict([val_x[i] for i in vkeep])
            gold = [val_y[t][i] for i in vkeep]
            if head.label_dtype.is_floating_point:
                std, mean = infos[t]["std"], infos[t]["mean"]
                pairs = [(g * std + mean, p * std + mean) for g, p in zip(gold, pred)]
            else:
                pairs = [(int(g), int(p)) for g, p in zip(gold, pred) if g != IGNORE]
            out[t] = head.metrics(pairs, infos[t], cfg.tasks[t].metric)
    return out
