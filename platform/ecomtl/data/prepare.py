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

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ecomtl.config.schema import ExperimentConfig, SourceConfig
from ecomtl.data.sources import DataError, RawSplit, open_split
from ecomtl.model.predictor import render_prompt
from ecomtl.tasks import TASK_HEADS
from ecomtl.tasks.base import is_missing

AUTO_LENGTH_PERCENTILE = 99
AUTO_LENGTH_SAMPLE = 4000


@dataclass
class PreparedSplit:
    """One source's split, tokenised, held in plain arrays (fast to batch, cheap to ship
    to Ray workers)."""

    input_ids: list[np.ndarray]
    token_type_ids: Optional[list[np.ndarray]]
    labels: dict[str, list]  # task → per-row label (int, float, or array over tokens)
    report: dict = field(default_factory=dict)
    #: grouped sources (``sources.<s>.group``): each row's group, numbered 0.. in order of
    #: first appearance in the split; None for ungrouped sources
    groups: Optional[np.ndarray] = None
    #: distillation (``distill/teacher.py``): task → the teacher's per-row targets
    #: (logits, a value, per-token logits), aligned with the rows; None without a teacher
    teacher: Optional[dict[str, list]] = None

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
    if src.prompt:
        text = render_prompt(src.prompt, text)
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
    """The 99th percentile of token counts on a sample of train rows, rounded up to 8."""
    enc = tokenize(tokenizer, src, inputs, pairs, None)
    lengths = [len(x) for x in enc["input_ids"]]
    length = int(np.ceil(np.percentile(lengths, AUTO_LENGTH_PERCENTILE) / 8) * 8)
    return max(8, min(length, tokenizer.model_max_length if tokenizer.model_max_length < 10**6 else 512))


def select_rows(name: str, cfg: ExperimentConfig, batch: dict, n_rows: int, label_infos: dict[str, dict]):
    """Apply the bad-row policy to raw rows (``batch``: column → values): the usable
    inputs, pairs and encoded labels, each kept row's group key (grouped sources; else
    None), plus why the others were skipped or ignored."""
    src = cfg.sources[name]
    tasks = cfg.task_names_by_source()[name]
    status = Counter()
    reasons = {t: Counter() for t in tasks}
    inputs, pairs, labels, keys = [], [], {t: [] for t in tasks}, []
    for i in range(n_rows):
        text, pair = _inputs(src, batch, i)
        if text is None:
            status["missing_text"] += 1
            continue
        key = None
        if src.group:
            key = batch[src.group][i]
            if is_missing(key):
                status["missing_group"] += 1
                continue
            key = str(key)
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
        keys.append(key)
        for t in tasks:
            labels[t].append(encoded[t])
    return inputs, pairs, labels, (keys if src.group else None), status, reasons


def number_groups(keys: Optional[list]) -> Optional[np.ndarray]:
    """Group keys → 0, 1, ... in order of first appearance (None stays None)."""
    if keys is None:
        return None
    ids: dict = {}
    return np.fromiter((ids.setdefault(k, len(ids)) for k in keys), dtype=np.int64, count=len(keys))


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


def resolve_max_length(tokenizer, cfg: ExperimentConfig, raw: RawSplit, label_infos: dict[str, dict]) -> int:
    """A source's ``max_length``: the configured number, or for ``auto`` the percentile
    over a sample of its usable train rows (the same rule for both engines)."""
    src = cfg.sources[raw.name]
    if src.max_length != "auto":
        return src.max_length
    rows = raw.sample(AUTO_LENGTH_SAMPLE)
    n = len(next(iter(rows.values()), []))
    inputs, pairs, _, _, _, _ = select_rows(raw.name, cfg, rows, n, label_infos)
    if not inputs:
        raise DataError(f"sources.{raw.name}: no usable rows in a sample of {n} train rows to size max_length on")
    return auto_max_length(tokenizer, src, inputs, pairs)


def prepare_source(raw: RawSplit, cfg: ExperimentConfig, tokenizer, label_infos: dict[str, dict],
                   max_length: int) -> PreparedSplit:
    """Encode one source's split in memory (``label_infos`` fit on train first)."""
    inputs, pairs, labels, keys, status, reasons = select_rows(raw.name, cfg, raw.rows(), len(raw), label_infos)
    if not inputs:
        raise DataError(f"sources.{raw.name}: no usable rows in split {raw.split!r} ({dict(status)})")
    input_ids, token_type_ids, labels, truncated = encode_rows(tokenizer, raw.src, inputs, pairs, labels, max_length)
    for t in list(labels):  # heads that extend their rows (generation: prompt + target)
        task = cfg.tasks[t]
        finished = TASK_HEADS.get(task.head).finish_rows(tokenizer, input_ids, labels[t], task.options)
        if finished is not None:
            input_ids, labels[t] = finished
    report = {
        "path": raw.path,
        "rows_read": len(raw),
        "rows_used": len(inputs),
        "skipped": dict(status),
        "tasks": {t: dict(r) for t, r in reasons.items()},
        "max_length": max_length,
        "truncated_rows": truncated,
    }
    groups = number_groups(keys)
    if groups is not None:
        report["groups"] = int(groups.max()) + 1
    return PreparedSplit(input_ids, token_type_ids, labels, report, groups)


def fit_label_infos(cfg: ExperimentConfig, root: str, engine: str = "memory",
                    opened: Optional[dict[str, RawSplit]] = None) -> dict[str, dict]:
    """Label spaces from the train split alone (saved in the bundle). ``opened``: train
    splits already read (source → RawSplit), so a source is read once."""
    infos = {}
    for source, tasks in cfg.task_names_by_source().items():
        raw = (opened or {}).get(source) or open_split(source, cfg, root, "train", engine)
        for t in tasks:
            values = raw.column(cfg.tasks[t].label, t)
            head = TASK_HEADS.get(cfg.tasks[t].head)
            try:
                infos[t] = head.fit_labels(values)
            except ValueError as err:
                raise DataError(f"tasks.{t}: {err}") from None
            try:  # on the driver, before any worker starts: e.g. pos_f1 on a 5-class task
                head.check_metric(cfg.tasks[t].metric, infos[t])
            except ValueError as err:
                raise DataError(f"tasks.{t}.metric: {err}") from None
    return infos


def prepare_data(
    cfg: ExperimentConfig,
    tokenizer,
    splits: tuple[str, ...] = ("train", "validation"),
    label_infos: Optional[dict[str, dict]] = None,
    max_lengths: Optional[dict[str, int]] = None,
    root: Optional[str] = None,
) -> PreparedData:
    """The in-memory engine. Train fixes label maps and ``auto`` lengths, which the other
    splits reuse; without train in ``splits``, pass them (a bundle's, or the streamed
    train's) or they are fit from the train split."""
    root = root or cfg.resolved_data_root()
    needs_train = ("train" in splits or label_infos is None
                   or any(s not in (max_lengths or {}) for s in cfg.sources))
    opened = {s: open_split(s, cfg, root, "train") for s in cfg.sources} if needs_train else {}
    label_infos = label_infos or fit_label_infos(cfg, root, opened=opened)
    max_lengths = dict(max_lengths or {})
    for source in cfg.sources:
        if source not in max_lengths:
            max_lengths[source] = resolve_max_length(tokenizer, cfg, opened[source], label_infos)
    out: dict[str, dict[str, PreparedSplit]] = {}
    for split in splits:
        out[split] = {}
        for source in cfg.sources:
            raw = opened[source] if split == "train" else open_split(source, cfg, root, split)
            out[split][source] = prepare_source(raw, cfg, tokenizer, label_infos, max_lengths[source])
    return PreparedData(label_infos=label_infos, max_lengths=max_lengths, splits=out)
