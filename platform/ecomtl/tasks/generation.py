"""Text generation on a decoder backbone: the source's text (through the source's
``prompt`` template) is the prompt, the task's label column the target to write (a
category path, an attribute list, a short description).

Training is the usual causal-LM fine-tuning, inside the same multi-task step as the other
heads: each row is prompt + target + EOS, and the loss is the next-token cross-entropy on
the target tokens only (the prompt's positions carry no label). The head has no weights
of its own: it reads the backbone's token states and projects them with the backbone's
own LM head (tied to the embeddings in Llama/SmolLM); with per-task LoRA it trains its
own adapter.

Evaluation and serving decode for real, with Hugging Face ``generate`` (greedy or beam
search, ``max_new_tokens``, a stop on EOS): prompts are left-padded as decoding needs,
and in a distributed evaluation ``synced_gpus`` keeps every rank stepping until all are
done (ZeRO-3 gathers parameters collectively). Metrics over (gold, generated) texts:
exact match and token F1 after lower-casing and collapsing whitespace, and ROUGE-L
(F-measure of Google's ``rouge_score``).

The generation source holds this task alone (its inputs carry the target), and is read
in memory.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from ecomtl.tasks.base import IGNORE, TASK_HEADS, TaskHead, is_missing

SPACES = re.compile(r"\s+")


class GenerationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(32, ge=1, le=1024, description="decoding budget; also the most a request may ask")
    max_target_tokens: int = Field(64, ge=1, le=4096, description="training targets are cut to this many tokens")
    num_beams: int = Field(1, ge=1, le=16, description="1: greedy decoding; more: beam search")


def normalize(text: str) -> str:
    return SPACES.sub(" ", text.strip().lower())


def token_f1(gold: str, pred: str) -> float:
    """SQuAD-style F1 over whitespace tokens of the normalised texts."""
    g, p = normalize(gold).split(), normalize(pred).split()
    if not g or not p:
        return float(g == p)
    common = sum((Counter(g) & Counter(p)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def text_metrics(pairs: list[tuple[str, str]]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    return {
        "exact_match": float(np.mean([normalize(g) == normalize(p) for g, p in pairs])),
        "token_f1": float(np.mean([token_f1(g, p) for g, p in pairs])),
        "rouge_l": float(np.mean([scorer.score(g, p)["rougeL"].fmeasure for g, p in pairs])),
    }


@TASK_HEADS.register("generation")
class GenerationHead(TaskHead):
    """Writes the label column's text after the prompt (decoder backbones; target-only loss)."""

    input_kinds = ("text",)
    level = "token"
    Options = GenerationOptions
    needs_lm_head = True
    owns_source = True
    streams = False
    ignore_value = None  # a row without a target: prompt only, no loss
    selectable_metrics = {
        "rouge_l": "ROUGE-L F-measure of the generated text against the target (rouge_score)",
        "exact_match": "share of generations equal to the target (case and spacing aside)",
        "token_f1": "F1 of the word overlap between generation and target",
    }
    default_metric = "rouge_l"

    def __init__(self, hidden_size, label_info, dropout=0.1, options=None):
        super().__init__(hidden_size, label_info, dropout, options)
        self._refs: tuple = ()  # (backbone, tokenizer, route): see attach

    def attach(self, backbone, tokenizer, route: str) -> None:
        # a tuple, not attributes: the backbone must not become a submodule of the head
        # (its weights would be saved and partitioned twice)
        self._refs = (backbone, tokenizer, route)

    # -- labels -----------------------------------------------------------------------
    @classmethod
    def fit_labels(cls, values):
        n = sum(1 for v in values if not is_missing(v))
        if n == 0:
            raise ValueError("generation needs target texts in train")
        return {"examples": n}

    @classmethod
    def encode_label(cls, value, info):
        if is_missing(value):
            return None, "missing_label"
        return str(value).strip(), None

    @classmethod
    def finish_rows(cls, tokenizer, input_ids: list[np.ndarray], targets: list, options: dict):
        """prompt + target + EOS per row, and labels that are the target's token ids on
        its positions and IGNORE on the prompt's."""
        opts = GenerationOptions.model_validate(options)
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ValueError("generation needs a tokenizer with an EOS token (the stop of decoding)")
        texts = [t if isinstance(t, str) else "" for t in targets]
        encoded = tokenizer([" " + t for t in texts], add_special_tokens=False)["input_ids"]
        ids_out, labels_out = [], []
        for prompt, text, target in zip(input_ids, texts, encoded):
            target = list(target[:opts.max_target_tokens]) + [eos] if text else []
            ids_out.append(np.concatenate([prompt, np.asarray(target, dtype=prompt.dtype)]))
            labels_out.append(np.concatenate([np.full(len(prompt), IGNORE, dtype=np.int64),
                                              np.asarray(target, dtype=np.int64)]))
        return ids_out, labels_out

    # -- model ------------------------------------------------------------------------
    def forward(self, encoded, batch):
        """LM logits at the positions that predict a target token: [n_target_tokens, vocab]."""
        labels = batch["labels"][self.task_name]
        predicts = labels[:, 1:] != IGNORE
        hidden = encoded.hidden[:, :-1][predicts[:, :encoded.hidden.shape[1] - 1]]
        return self._refs[0].lm_logits(hidden)

    def loss(self, logits, labels, batch=None):
        target = labels[:, 1:][labels[:, 1:] != IGNORE]
        if target.numel() == 0:
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), target)

    # -- decoding ---------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list, max_new_tokens: Optional[int] = None) -> list[dict]:
        """Greedy/beam decoding of token-id prompts: per prompt the text, its tokens, and
        the sum of the generated tokens' log-probabilities (EOS included)."""
        import torch.distributed as dist

        from ecomtl.adapters.base import adapter_layers, set_route

        backbone, tok, route = self._refs
        set_route(adapter_layers(backbone), route)
        lm = backbone.model
        n = min(max_new_tokens or self.options.max_new_tokens, self.options.max_new_tokens)
        width = max(len(p) for p in prompts)
        device = next(lm.parameters()).device
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends where decoding starts
            ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
        beams = self.options.num_beams
        out = lm.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=n,
                          num_beams=beams, do_sample=False, eos_token_id=tok.eos_token_id,
                          pad_token_id=tok.pad_token_id, output_scores=True, return_dict_in_generate=True,
                          synced_gpus=dist.is_initialized() and dist.get_world_size() > 1,
                          temperature=None, top_p=None, top_k=None)
        steps = lm.compute_transition_scores(out.sequences, out.scores, getattr(out, "beam_indices", None),
                                             normalize_logits=beams == 1)
        results = []
        for i in range(len(prompts)):
            new = out.sequences[i, width:].tolist()
            stop = new.index(tok.eos_token_id) + 1 if tok.eos_token_id in new else len(new)
            logprob = float(steps[i, :stop].float().sum()) if stop else 0.0
            results.append({"text": tok.decode(new[:stop], skip_special_tokens=True).strip(),
                            "tokens": stop, "logprob_sum": logprob,
                            "stopped": tok.eos_token_id in new[:stop]})
        return results

    # -- evaluation ---------------------------------------------------------------------
    def gold_and_pred(self, logits, labels, batch=None):
        """Decodes each labelled row's prompt (what precedes its target) for real."""
        tok = self._refs[1]
        ids = batch["input_ids"].cpu()
        labels = labels.cpu()
        rows, prompts, golds = [], [], []
        for i in range(len(ids)):
            where = torch.nonzero(labels[i] != IGNORE).flatten()
            if len(where) == 0:
                continue
            rows.append(i)
            prompts.append(ids[i, :int(where[0])].tolist())
            golds.append(tok.decode(labels[i][where].tolist(), skip_special_tokens=True).strip())
        # every rank decodes (a filler row when it has none), as synced ZeRO-3 steps need
        made = self.generate(prompts or [ids[0, :1].tolist()])
        return [(g, m["text"]) for g, m in zip(golds, made)] if rows else []

    @classmethod
    def metrics(cls, pairs, info, metric=None):
        if not pairs:
            return {"n": 0, "score": 0.0}
        return cls.scored({"n": len(pairs), **text_metrics(pairs)}, metric)

    def predict(self, logits, **context):
        raise TypeError("generation heads answer through generate(), not from an encoding")

    # -- serving --------------------------------------------------------------------------
    needs_backbone = True  # decoding runs the whole model: its deployment holds a full copy

    @classmethod
    def request_model(cls, task: str, shapes, options: dict):
        """The standard ``inputs`` body plus ``max_new_tokens``: at most the bundle's own
        ``max_new_tokens`` (the server's bound)."""
        from pydantic import create_model

        cap = GenerationOptions.model_validate(options or {}).max_new_tokens

        class GenerationRequest(shapes.model(f"{task}_inputs", [task])):
            def params(self) -> dict:
                return {"max_new_tokens": self.max_new_tokens}

        return create_model(f"{task}_request", __base__=GenerationRequest,
                            max_new_tokens=(Optional[int], Field(None, ge=1, le=cap, description=(
                                f"tokens to generate at most (1-{cap}; default {cap}); decoding also "
                                "stops at EOS"))))
