"""Read each source with Hugging Face ``datasets``, map its columns to (text, text_pair |
words) plus one label per task, tokenise without padding, and count every row that
cannot be used.

Policy for bad rows (documented in the README):
- no text in any text column (or an empty pair side, or no words) → row skipped,
  counted as ``missing_text``;
- a missing label → that task ignores the row (``missing_label``), the others use it;
- a label never seen in train (validation/test only) → ignored for that task and
  counted as ``unknown_label``; label maps are learnt from train alone;
- a row with no usable label for any task on its source is skipped (``no_label``).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ecomtl.config.schema import ExperimentConfig, SourceConfig
from ecomtl.tasks import TASK_HEADS
from ecomtl.tasks.base import is_missing

AUTO_LENGTH_PERCENTILE = 99
AUTO_LENGTH_SAMPLE = 4000


class DataError(ValueError):
    """A dataset that cannot be read as configured; the message names source and column."""


@dataclass
class PreparedSplit:
    """One source's split, tokenised, held in plain arrays (fast to batch, cheap to ship
    to Ray workers)."""

    input_ids: list[np.ndarray]
    token_type_ids: Optional[list[np.ndarray]]
    labels: dict[str, list]  # task → per-row label (int, float, or array over tokens)
    report: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))


@dataclass
class PreparedData:
    label_infos: dict[str, dict]  # task → head label space (learnt from train)
    max_lengths: dict[str, int]  # source → tokens
    splits: dict[str, dict[str, PreparedSplit]]  # split → source → data

    def report(self) -> dict:
        return {split: {s: d.report for s, d in by_src.items()} for split, by_src in self.splits.items()}


def source_path(src: SourceConfig, root: str, split: str) -> str:
    return src.path.format(root=root, split=split)


def read_source(name: str, src: SourceConfig, root: str, split: str):
    import datasets

    path = source_path(src, root, split)
    if not os.path.exists(path):
        raise DataError(f"sources.{name}: no file for split {split!r} at {path}")
    datasets.disable_progress_bars()
    ds = datasets.load_dataset(src.format, data_files=path, split="train")
    needed = list(src.text or []) + list(src.text_pair or []) + ([src.tokens] if src.tokens else [])
    missing = [c for c in needed if c not in ds.column_names]
    if missing:
        raise DataError(
            f"sources.{name}: column(s) {missing} not in {path}; columns: {ds.column_names}"
        )
    if src.max_rows and split == "train" and len(ds) > src.max_rows:
        ds = ds.select(range(src.max_rows))
    return ds


def join_text(row_values: list) -> str:
    parts = [str(v).strip() for v in row_values if not is_missing(v)]
    return ". ".join(p for p in parts if p)


def _inputs(src: SourceConfig, batch: dict, i: int):
    """(text, text_pair | None) or (words, None); None when the row has no input."""
    if src.tokens:
        words = batch[src.tokens][i]
        words = [w for w in (words or []) if isinstance(w, str)]
        return (words, None) if words else (None, None)
    text = join_text([batch[c][i] for c in src.text])
    if not text:
        return None, None
    if src.text_pair:
        pair = join_text([batch[c][i] for c in src.text_pair])
        return (text, pair) if pair else (None, None)
    return text, None


def tokenize(tokenizer, src: SourceConfig, inputs: list, pairs: list, max_length: Optional[int]):
    kwargs = dict(truncation=max_length is not None, max_length=max_length)
    if src.tokens:
        return tokenizer(inputs, is_split_into_words=True, **kwargs)
    if src.text_pair:
        return tokenizer(inputs, pairs, **kwargs)
    return tokenizer(inputs, **kwargs)


def auto_max_length(tokenizer, src: SourceConfig, inputs: list, pairs: list) -> int:
    """The 99th percentile of token counts on (a sample of) train, rounded up to 8."""
    n = min(len(inputs), AUTO_LENGTH_SAMPLE)
    idx = np.random.default_rng(0).choice(len(inputs), size=n, replace=False)
    enc = tokenize(tokenizer, src, [inputs[i] for i in idx], [pairs[i] for i in idx], None)
    lengths = [len(x) for x in enc["input_ids"]]
    length = int(np.ceil(np.percentile(lengths, AUTO_LENGTH_PERCENTILE) / 8) * 8)
    return max(8, min(length, tokenizer.model_max_length if tokenizer.model_max_length < 10**6 else 512))


def select_rows(name: str, cfg: ExperimentConfig, batch: dict, n_rows: int, label_infos: dict[str, dict]):
    """Apply the bad-row policy to raw rows (``batch``: column → values): the usable
    inputs, pairs and encoded labels, plus why the others were skipped or ignored."""
    src = cfg.sources[name]
    tasks = cfg.task_names_by_source()[name]
    status = Counter()
    reasons = {t: Counter() for t in tasks}
    inputs, pairs, labels = [], [], {t: [] for t in tasks}
    for i in range(n_rows):
        text, pair = _inputs(src, batch, i)
        if text is None:
            status["missing_text"] += 1
            continue
        encoded, usable = {}, False
        for t in tasks:
            head = TASK_HEADS.get(cfg.tasks[t].head)
            value, why = head.encode_label(batch[cfg.tasks[t].label][i], label_infos[t])
            if why:
                reasons[t][why] += 1
            usable = usable or value is not None
            encoded[t] = head.ignore_value if value is None else value
        if not usable:
            status["no_label"] += 1
            continue
        if src.tokens and any(isinstance(v, list) and len(v) != len(text) for v in encoded.values()):
            status["tags_tokens_mismatch"] += 1
            continue
        inputs.append(text)
        pairs.append(pair)
        for t in tasks:
            labels[t].append(encoded[t])
    return inputs, pairs, labels, status, reasons


def encode_rows(tokenizer, src: SourceConfig, inputs: list, pairs: list, labels: dict[str, list], max_length: int):
    """Tokenise selected rows: (input_ids, token_type_ids | None, labels aligned to
    sub-tokens for tagging, number of truncated rows)."""
    enc = tokenize(tokenizer, src, inputs, pairs, max_length)
    input_ids = [np.asarray(x, dtype=np.int32) for x in enc["input_ids"]]
    token_type_ids = (
        [np.asarray(x, dtype=np.int8) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None
    )
    labels = dict(labels)
    if src.tokens:
        # First sub-token of each word carries the word's label; the rest are ignored.
        for t, values in labels.items():
            aligned = []
            for i, word_labels in enumerate(values):
                row = np.full(len(input_ids[i]), -100, dtype=np.int64)
                if isinstance(word_labels, list):
                    prev = None
                    for pos, w in enumerate(enc.word_ids(i)):
                        if w is not None and w != prev:
                            row[pos] = word_labels[w]
                        prev = w
                aligned.append(row)
            labels[t] = aligned
        truncated = sum(
            1 for i in range(len(inputs)) if max((w for w in enc.word_ids(i) if w is not None), default=-1) + 1 < len(inputs[i])
        )
    else:
        truncated = sum(1 for x in input_ids if len(x) >= max_length)
    return input_ids, token_type_ids, labels, truncated


def resolve_max_length(tokenizer, src: SourceConfig, inputs: list, pairs: list) -> int:
    return auto_max_length(tokenizer, src, inputs, pairs) if src.max_length == "auto" else src.max_length


def prepare_source(
    name: str,
    cfg: ExperimentConfig,
    tokenizer,
    split: str,
    label_infos: dict[str, dict],
    max_length: Optional[int],
    root: str,
) -> tuple[PreparedSplit, int]:
    """Encode one source's split. ``label_infos`` must hold its tasks (fit on train
    first); ``max_length`` None resolves the source's setting (``auto`` → from data)."""
    src = cfg.sources[name]
    ds = read_source(name, src, root, split)
    n_rows = len(ds)
    inputs, pairs, labels, status, reasons = select_rows(name, cfg, ds.to_dict(), n_rows, label_infos)
    if not inputs:
        raise DataError(f"sources.{name}: no usable rows in split {split!r} ({dict(status)})")
    if max_length is None:
        max_length = resolve_max_length(tokenizer, src, inputs, pairs)
    input_ids, token_type_ids, labels, truncated = encode_rows(tokenizer, src, inputs, pairs, labels, max_length)
    report = {
        "path": source_path(src, root, split),
        "rows_read": n_rows,
        "rows_used": len(inputs),
        "skipped": dict(status),
        "tasks": {t: dict(r) for t, r in reasons.items()},
        "max_length": max_length,
        "truncated_rows": truncated,
    }
    return PreparedSplit(input_ids, token_type_ids, labels, report), max_length


def fit_label_infos(cfg: ExperimentConfig, root: str) -> dict[str, dict]:
    """Label spaces from the train split alone (saved in the bundle)."""
    infos = {}
    for source, tasks in cfg.task_names_by_source().items():
        ds = read_source(source, cfg.sources[source], root, "train")
        for t in tasks:
            column = cfg.tasks[t].label
            if column not in ds.column_names:
                raise DataError(
                    f"tasks.{t}.label: column {column!r} not in source {source!r}; columns: {ds.column_names}"
                )
            try:
                infos[t] = TASK_HEADS.get(cfg.tasks[t].head).fit_labels(ds[column])
            except ValueError as err:
                raise DataError(f"tasks.{t}: {err}") from None
    return infos


def prepare_data(
    cfg: ExperimentConfig,
    tokenizer,
    splits: tuple[str, ...] = ("train", "validation"),
    label_infos: Optional[dict[str, dict]] = None,
    max_lengths: Optional[dict[str, int]] = None,
    root: Optional[str] = None,
) -> PreparedData:
    """Train is prepared first when present: it fixes label maps and ``auto`` lengths,
    which the other splits then reuse. For scoring a bundle, pass the bundle's
    ``label_infos`` and ``max_lengths`` instead."""
    root = root or cfg.resolved_data_root()
    label_infos = label_infos or fit_label_infos(cfg, root)
    max_lengths = dict(max_lengths or {})
    ordered = sorted(splits, key=lambda s: s != "train")
    out: dict[str, dict[str, PreparedSplit]] = {}
    for split in ordered:
        out[split] = {}
        for source in cfg.sources:
            prepared, length = prepare_source(
                source, cfg, tokenizer, split, label_infos, max_lengths.get(source), root
            )
            max_lengths[source] = length
            out[split][source] = prepared
    return PreparedData(label_infos=label_infos, max_lengths=max_lengths, splits=out)
