"""In-process predictions over a bundle, in three stages that Serve deployments reuse:

    Preprocessor   raw inputs → validated, tokenised ``Features`` (tokenizer + tasks.json only)
    EncoderRunner  ``Features`` → pooled vectors (+ token states for token heads)
    HeadRunner     encoder outputs → JSON-ready predictions of one or more heads

``Predictor`` chains them in one process: the encoder runs once per source for all
requested tasks on it. The HTTP app runs the very same stages in separate deployments,
so HTTP predictions equal these (up to float noise from padding to a batch's longest row).

Input policy (documented in the README of serve_configs/):
- an item is ``{"text": str, "text_pair": str | None}`` (or a bare string);
- more than ``max_items`` items, or a text over ``max_text_chars`` characters → 413;
- empty text, a pair sent to a single-text task or a single text to a pair task → 422;
- texts longer than the source's token ``max_length`` are truncated (as in training) and
  the prediction says ``"truncated": true``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
import torch

from ecomtl.tasks import TASK_HEADS

WORD = re.compile(r"\S+")
DEFAULT_MAX_ITEMS = 64
DEFAULT_MAX_TEXT_CHARS = 10_000


class InputError(ValueError):
    """A request the service refuses; ``status`` is the HTTP status, ``code`` a stable name."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Limits:
    max_items: int = DEFAULT_MAX_ITEMS
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS


@dataclass
class Features:
    """One source's tokenised batch plus what heads need to map tokens back to text."""

    source: str
    kind: str  # text | pair | tokens
    input_ids: list[list[int]]
    token_type_ids: Optional[list[list[int]]]
    texts: list[str]
    truncated: list[bool]
    word_ids: Optional[list[list[Optional[int]]]] = None
    words: Optional[list[list[tuple[int, int]]]] = None

    def rows(self, start: int, stop: int) -> "Features":
        """The slice [start, stop): Serve batches several requests into one Features."""
        cut = lambda xs: None if xs is None else xs[start:stop]  # noqa: E731
        return Features(self.source, self.kind, self.input_ids[start:stop], cut(self.token_type_ids),
                        self.texts[start:stop], self.truncated[start:stop], cut(self.word_ids), cut(self.words))

    @staticmethod
    def concat(parts: list["Features"]) -> "Features":
        first = parts[0]
        join = lambda name: None if getattr(first, name) is None else [x for p in parts for x in getattr(p, name)]  # noqa: E731
        return Features(first.source, first.kind, join("input_ids"), join("token_type_ids"), join("texts"),
                        join("truncated"), join("word_ids"), join("words"))


@dataclass
class Encoded:
    """Encoder outputs for the rows of one ``Features`` (numpy: cheap to ship between actors)."""

    pooled: np.ndarray  # [n, hidden]
    hidden: Optional[list[np.ndarray]] = None  # per row [len_i, hidden], only for token heads

    def rows(self, start: int, stop: int) -> "Encoded":
        return Encoded(self.pooled[start:stop], None if self.hidden is None else self.hidden[start:stop])


def normalize_items(raw: Any) -> list[tuple[str, Optional[str]]]:
    """One input or a list of inputs → [(text, text_pair | None)]. Structure only; the
    pydantic schemas give the same shapes over HTTP."""
    items = raw if isinstance(raw, list) else [raw]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            out.append((item, None))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            pair = item.get("text_pair")
            if pair is not None and not isinstance(pair, str):
                raise InputError(422, "invalid_request", f"inputs[{i}].text_pair must be a string")
            out.append((item["text"], pair))
        else:
            raise InputError(422, "invalid_request", f"inputs[{i}] must be a string or {{text, text_pair}}")
    return out


def check_items(items: list[tuple[str, Optional[str]]], kind: str, limits: Limits, what: str) -> None:
    """Refuse what the model cannot answer; ``what`` names the task(s) in messages."""
    if not items:
        raise InputError(422, "empty_inputs", "inputs is empty: give at least one input")
    if len(items) > limits.max_items:
        raise InputError(413, "too_many_items", f"{len(items)} inputs exceed the limit of {limits.max_items} per request")
    for i, (text, pair) in enumerate(items):
        for name, value in (("text", text), ("text_pair", pair)):
            if value is None:
                continue
            if not value.strip():
                raise InputError(422, "empty_text", f"inputs[{i}].{name} is empty")
            if len(value) > limits.max_text_chars:
                raise InputError(413, "text_too_long", f"inputs[{i}].{name} has {len(value)} characters; "
                                                       f"the limit is {limits.max_text_chars}")
        if kind == "pair" and pair is None:
            raise InputError(422, "pair_required", f"{what} compares two texts: inputs[{i}] needs 'text_pair'")
        if kind != "pair" and pair is not None:
            raise InputError(422, "pair_not_accepted", f"{what} reads a single text: inputs[{i}] must not have 'text_pair'")


def split_words(text: str) -> list[tuple[int, int]]:
    """Whitespace words with character offsets: tagging trained on pre-split words, so raw
    text is split the same way and predictions map back to the original string."""
    return [m.span() for m in WORD.finditer(text)]


class Preprocessor:
    """Validation and tokenisation; needs only the tokenizer and tasks.json."""

    def __init__(self, tokenizer, spec: dict, limits: Limits = Limits()):
        self.tokenizer, self.spec, self.limits = tokenizer, spec, limits

    def task_kind(self, task: str) -> str:
        return self.spec["sources"][self.task_source(task)]["kind"]

    def task_source(self, task: str) -> str:
        if task not in self.spec["tasks"]:
            raise InputError(404, "unknown_task", f"unknown task {task!r}; known: {', '.join(self.spec['tasks'])}")
        return self.spec["tasks"][task]["source"]

    def group(self, tasks: list[str], items: list[tuple[str, Optional[str]]]) -> dict[str, list[str]]:
        """Tasks by source, after checking that every task accepts these inputs."""
        if not tasks:
            raise InputError(422, "no_tasks", "give at least one task")
        by_source: dict[str, list[str]] = {}
        for t in dict.fromkeys(tasks):
            by_source.setdefault(self.task_source(t), []).append(t)
            check_items(items, self.task_kind(t), self.limits, f"task {t!r}")
        return by_source

    def features(self, source: str, items: list[tuple[str, Optional[str]]]) -> Features:
        src = self.spec["sources"][source]
        texts = [t for t, _ in items]
        kw = dict(truncation=True, max_length=src["max_length"])
        if src["kind"] == "tokens":
            words = [split_words(t) for t in texts]
            enc = self.tokenizer([[t[a:b] for a, b in w] for t, w in zip(texts, words)], is_split_into_words=True, **kw)
            word_ids = [enc.word_ids(i) for i in range(len(texts))]
            truncated = [max((w for w in ids if w is not None), default=-1) + 1 < len(ws)
                         for ids, ws in zip(word_ids, words)]
        else:
            pairs = [p for _, p in items] if src["kind"] == "pair" else None
            enc = self.tokenizer(texts, pairs, **kw) if pairs else self.tokenizer(texts, **kw)
            words = word_ids = None
            truncated = [bool(e.overflowing) for e in enc.encodings]
        types = enc.get("token_type_ids")
        return Features(source, src["kind"], enc["input_ids"], types, texts, truncated, word_ids, words)


class EncoderRunner:
    """The shared encoder: one forward pass for a whole (possibly merged) batch."""

    def __init__(self, encoder: torch.nn.Module, pooling: str):
        self.encoder, self.pooling = encoder.eval(), pooling

    @torch.inference_mode()
    def encode(self, feats: Features, need_hidden: bool) -> Encoded:
        from ecomtl.model.multitask import pool

        n, width = len(feats.input_ids), max(len(x) for x in feats.input_ids)
        ids = torch.zeros((n, width), dtype=torch.long)  # pad id is irrelevant under the mask
        mask = torch.zeros((n, width), dtype=torch.long)
        types = torch.zeros((n, width), dtype=torch.long) if feats.token_type_ids is not None else None
        for i, row in enumerate(feats.input_ids):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            if types is not None:
                types[i, : len(row)] = torch.tensor(feats.token_type_ids[i])
        kwargs = {"input_ids": ids, "attention_mask": mask}
        if types is not None:
            kwargs["token_type_ids"] = types
        hidden = self.encoder(**kwargs).last_hidden_state.float()
        pooled = pool(hidden, mask, self.pooling).numpy()
        rows = [hidden[i, : len(r)].numpy() for i, r in enumerate(feats.input_ids)] if need_hidden else None
        return Encoded(pooled, rows)


class HeadRunner:
    """Task heads → JSON-ready predictions."""

    def __init__(self, heads: dict[str, torch.nn.Module]):
        self.heads = {t: h.eval() for t, h in heads.items()}

    def needs_hidden(self, tasks: Iterable[str]) -> bool:
        return any(self.heads[t].level == "token" for t in tasks)

    @torch.inference_mode()
    def predict(self, task: str, enc: Encoded, feats: Features) -> list[dict]:
        head = self.heads[task]
        pooled = torch.tensor(enc.pooled)  # a copy: arrays from Ray's object store are read-only
        hidden = None
        if head.level == "token":
            width = max(len(h) for h in enc.hidden)
            hidden = torch.zeros((len(enc.hidden), width, pooled.shape[-1]))
            for i, h in enumerate(enc.hidden):
                hidden[i, : len(h)] = torch.tensor(h)
        preds = head.predict(head(pooled, hidden), word_ids=feats.word_ids, words=feats.words, texts=feats.texts)
        names = head.label_info.get("names")
        for p, cut in zip(preds, feats.truncated):
            p["truncated"] = cut
            if feats.kind == "pair" and names == ["0", "1"]:
                p["match_probability"] = p["probabilities"]["1"]  # "same product" for matching
        return preds


def heads_from_bundle(path: Union[str, Path], spec: dict, tasks: Iterable[str]) -> dict[str, torch.nn.Module]:
    """Only the named heads' weights, without the encoder: what a head deployment holds."""
    import json

    from safetensors import safe_open

    path = Path(path)
    hidden = int(json.loads((path / "encoder" / "config.json").read_text())["hidden_size"])
    heads = {}
    with safe_open(str(path / "heads.safetensors"), framework="pt") as f:
        for t in tasks:
            ts = spec["tasks"][t]
            head = TASK_HEADS.get(ts["head"])(hidden, ts["labels"], 0.0)  # dropout is off in eval anyway
            prefix = f"heads.{t}."
            head.load_state_dict({k[len(prefix):]: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)})
            heads[t] = head.eval()
    return heads


@dataclass
class Predictor:
    """The bundle in this process: ``predict(tasks, inputs)``, the encoder once per source."""

    pre: Preprocessor
    encoder: EncoderRunner
    heads: HeadRunner
    spec: dict = field(repr=False, default_factory=dict)

    @classmethod
    def from_bundle(cls, path: Union[str, Path], limits: Limits = Limits()) -> "Predictor":
        from ecomtl.model.bundle import load_bundle

        b = load_bundle(path)
        return cls(Preprocessor(b.tokenizer, b.spec, limits), EncoderRunner(b.model.encoder, b.spec["pooling"]),
                   HeadRunner(dict(b.model.heads.items())), b.spec)

    def predict(self, tasks: list[str], inputs: Any) -> dict[str, list[dict]]:
        items = normalize_items(inputs)
        out = {}
        for source, names in self.pre.group(tasks, items).items():
            feats = self.pre.features(source, items)
            enc = self.encoder.encode(feats, self.heads.needs_hidden(names))
            for t in names:
                out[t] = self.heads.predict(t, enc, feats)
        return out


def untrained_bundle(cfg, dst: Union[str, Path], root: Optional[str] = None) -> Path:
    """A bundle straight from the pretrained encoder with freshly initialised heads (no
    training): for throughput benchmarks and tests. Label spaces come from the train
    split; ``auto`` token lengths fall back to 128 instead of scanning the data."""
    from ecomtl.data.prepare import fit_label_infos
    from ecomtl.model.bundle import save_bundle
    from ecomtl.model.encoder import load_encoder, load_tokenizer
    from ecomtl.model.multitask import MultiTaskModel

    torch.manual_seed(cfg.training.seed)
    tok = load_tokenizer(cfg.model)
    infos = fit_label_infos(cfg, root or cfg.resolved_data_root())
    specs = {t: {"head": tc.head, "labels": infos[t]} for t, tc in cfg.tasks.items()}
    model = MultiTaskModel(load_encoder(cfg.model, len(tok)), specs, cfg.model.pooling, cfg.model.dropout)
    lengths = {s: (v.max_length if isinstance(v.max_length, int) else 128) for s, v in cfg.sources.items()}
    return save_bundle(dst, model, tok, cfg, infos, lengths, {"untrained": True})
