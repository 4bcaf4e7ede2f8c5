"""In-process predictions over a bundle, in three stages that Serve deployments reuse:

    Preprocessor   raw inputs → validated, tokenised ``Features`` (tokenizer + tasks.json only)
    EncoderRunner  ``Features`` → ``Encoded`` through ``MultiTaskModel.encode`` (backbone,
                   the route's adapter, pooling)
    HeadRunner     ``Encoded`` → JSON-ready predictions through ``MultiTaskModel.apply``
                   (sharing layer + head) and the head's ``predict``

``Predictor`` chains them in one process: the backbone runs once per (source, adapter
route) for all requested tasks on it. The HTTP app runs the very same stages in separate
deployments, and training and evaluation call the same ``encode``/``apply``, so HTTP
predictions equal the training model's forward (up to float noise from padding to a
batch's longest row).

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

import torch

from ecomtl.model.multitask import Encoded

WORD = re.compile(r"\S+")
DEFAULT_MAX_ITEMS = 64
DEFAULT_MAX_TEXT_CHARS = 10_000


def render_prompt(template: str, text: str) -> str:
    """``sources.<s>.prompt`` over a row's text (training and serving alike)."""
    return template.replace("{text}", text)


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
    pad_id: int
    input_ids: list[list[int]]
    token_type_ids: Optional[list[list[int]]]
    texts: list[str]
    truncated: list[bool]
    word_ids: Optional[list[list[Optional[int]]]] = None
    words: Optional[list[list[tuple[int, int]]]] = None

    def rows(self, start: int, stop: int) -> "Features":
        """The slice [start, stop): Serve batches several requests into one Features."""
        cut = lambda xs: None if xs is None else xs[start:stop]  # noqa: E731
        return Features(self.source, self.kind, self.pad_id, self.input_ids[start:stop], cut(self.token_type_ids),
                        self.texts[start:stop], self.truncated[start:stop], cut(self.word_ids), cut(self.words))

    def batch(self) -> dict:
        """The model's input tensors plus row metadata, padded as in training."""
        from ecomtl.data.collate import pad_rows

        return pad_rows(self.input_ids, self.pad_id, self.token_type_ids) | {"word_ids": self.word_ids}

    def merge_key(self) -> tuple:
        """Calls with equal keys can share one forward pass."""
        return (self.kind, self.token_type_ids is None, self.pad_id)

    @staticmethod
    def concat(parts: list["Features"]) -> "Features":
        """Parts must share ``merge_key`` (the encoder deployment groups them first)."""
        first = parts[0]
        join = lambda name: None if getattr(first, name) is None else [x for p in parts for x in getattr(p, name)]  # noqa: E731
        return Features(first.source, first.kind, first.pad_id, join("input_ids"), join("token_type_ids"), join("texts"),
                        join("truncated"), join("word_ids"), join("words"))


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

    def route(self, task: str) -> str:
        return self.spec["routes"][task]

    def group(self, tasks: list[str], items: list[tuple[str, Optional[str]]]) -> dict[tuple[str, str], list[str]]:
        """Tasks by (source, adapter route): one backbone pass each; after checking that
        every task accepts these inputs."""
        if not tasks:
            raise InputError(422, "no_tasks", "give at least one task")
        groups: dict[tuple[str, str], list[str]] = {}
        for t in dict.fromkeys(tasks):
            groups.setdefault((self.task_source(t), self.route(t)), []).append(t)
            check_items(items, self.task_kind(t), self.limits, f"task {t!r}")
        return groups

    def features(self, source: str, items: list[tuple[str, Optional[str]]]) -> Features:
        src = self.spec["sources"][source]
        texts = [t for t, _ in items]
        if src.get("prompt"):  # the source's template, as training applied it
            texts = [render_prompt(src["prompt"], t) for t in texts]
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
        return Features(source, src["kind"], self.tokenizer.pad_token_id, enc["input_ids"], types, texts, truncated,
                        word_ids, words)


class EncoderRunner:
    """The backbone: one ``MultiTaskModel.encode`` for a whole (possibly merged) batch."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        self.device = next(model.backbone.parameters()).device  # a GPU replica's, or the CPU

    @torch.inference_mode()
    def encode(self, feats: Features, route: str, need_hidden: bool, batch: Optional[dict] = None) -> Encoded:
        from ecomtl.model.multitask import to_device

        batch = batch if batch is not None else feats.batch()
        enc = self.model.encode(to_device(batch, self.device), route).float()
        # fp32 on the host: heads (other replicas, CPU) read it; token states only travel
        # when a token head reads them
        return Encoded(enc.pooled.cpu(), enc.hidden.cpu() if need_hidden else None, enc.mask.cpu())


class HeadRunner:
    """Encodings → JSON-ready predictions through ``MultiTaskModel.apply``."""

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval()
        # heads and the sharing layer are small: they run on the host, on the fp32 host
        # encodings the encoder returns, whatever device the backbone sits on
        model.heads.cpu()
        model.sharing.cpu()

    def needs_hidden(self, tasks: Iterable[str]) -> bool:
        return any(self.model.heads[t].level == "token" for t in tasks)

    @torch.inference_mode()
    def generate(self, task: str, feats: Features, max_new_tokens: Optional[int] = None) -> list[dict]:
        """A decoding head's answers (it runs the whole model: ``self.model`` must hold
        the backbone)."""
        made = self.model.heads[task].generate(feats.input_ids, max_new_tokens)
        for m, cut in zip(made, feats.truncated):
            m["truncated"] = cut
        return made

    @torch.inference_mode()
    def predict(self, task: str, enc: Encoded, feats: Features, batch: Optional[dict] = None) -> list[dict]:
        """``batch``: ``feats.batch()`` when the caller already padded it (one pad per
        request, not one per task)."""
        head = self.model.heads[task]
        out = self.model.apply_heads(enc, batch if batch is not None else feats.batch(), [task])[task]
        preds = head.predict(out.float(), word_ids=feats.word_ids, words=feats.words, texts=feats.texts)
        names = head.label_info.get("names")
        for p, cut in zip(preds, feats.truncated):
            p["truncated"] = cut
            if feats.kind == "pair" and names == ["0", "1"]:
                p["match_probability"] = p["probabilities"]["1"]  # "same product" for matching
        return preds


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
        return cls(Preprocessor(b.tokenizer, b.spec, limits), EncoderRunner(b.model), HeadRunner(b.model), b.spec)

    def predict(self, tasks: list[str], inputs: Any, max_new_tokens: Optional[int] = None) -> dict[str, list[dict]]:
        """``max_new_tokens``: the decoding budget of generation tasks (their own cap at most)."""
        items = normalize_items(inputs)
        out = {}
        for (source, route), names in self.pre.group(tasks, items).items():
            feats = self.pre.features(source, items)
            decoding = [t for t in names if self.heads.model.heads[t].needs_backbone]
            for t in decoding:
                out[t] = self.heads.generate(t, feats, max_new_tokens)
            names = [t for t in names if t not in decoding]
            if not names:
                continue
            batch = feats.batch()
            enc = self.encoder.encode(feats, route, self.heads.needs_hidden(names), batch)
            for t in names:
                out[t] = self.heads.predict(t, enc, feats, batch)
        return out


def untrained_bundle(cfg, dst: Union[str, Path], root: Optional[str] = None) -> Path:
    """A bundle straight from the pretrained encoder with freshly initialised heads (no
    training): for throughput benchmarks and tests. Label spaces come from the train
    split; ``auto`` token lengths fall back to 128 instead of scanning the data."""
    from ecomtl.data.prepare import fit_label_infos
    from ecomtl.model.build import build_model, load_tokenizer
    from ecomtl.model.bundle import save_bundle

    torch.manual_seed(cfg.training.seed)
    tok = load_tokenizer(cfg.model)
    infos = fit_label_infos(cfg, root or cfg.resolved_data_root())
    model = build_model(cfg, infos, tok)
    lengths = {s: (v.max_length if isinstance(v.max_length, int) else 128) for s, v in cfg.sources.items()}
    return save_bundle(dst, model, tok, cfg, infos, lengths, {"untrained": True})
