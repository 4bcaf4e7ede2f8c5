"""What every backbone provides. A backbone kind is one file in this package that
subclasses ``Backbone`` and registers itself in ``BACKBONES``.

A backbone owns a Hugging Face model (maybe with adapters injected), its tokenizer
policy (pad token, padding side) and pooling; ``MultiTaskModel.encode`` is the only
caller of ``token_states`` and ``pool``."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Optional

import torch
from pydantic import BaseModel
from torch import nn

from ecomtl.registry import Plugin, Registry

BACKBONES: Registry[type["Backbone"]] = Registry("backbone")
BASE_DIR = "backbone"  # inside a bundle: the base weights, Hugging Face format


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """One vector per row. ``last`` takes the last real token (found from the mask, so
    it is right whatever side the batch was padded on): in a causal decoder it is the
    only token that has seen the whole text."""
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        width = mask.shape[1]
        positions = torch.arange(width, device=mask.device).expand_as(mask)
        last = torch.where(mask.bool(), positions, -1).max(dim=1).values.clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class Backbone(Plugin, nn.Module):
    #: the shape of a randomly initialised model of this kind (``model.tiny``)
    Tiny: ClassVar[type[BaseModel]]
    #: accepted ``model.pooling`` values, the default first
    poolings: ClassVar[tuple[str, ...]]
    #: whether the model takes ``token_type_ids`` (BERT segments)
    uses_token_types: ClassVar[bool] = False
    #: has an LM head that generation heads project with (``lm_logits``)
    has_lm_head: ClassVar[bool] = False

    def __init__(self, model: nn.Module, pooling: str):
        super().__init__()
        self.model = model
        self.pooling = pooling

    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    # -- building ------------------------------------------------------------------------
    @classmethod
    def load_tokenizer(cls, location: str):
        raise NotImplementedError

    @classmethod
    def pretrained(cls, location: str) -> nn.Module:
        """The Hugging Face model from a local directory or hub id (safetensors only)."""
        raise NotImplementedError

    @classmethod
    def random(cls, tiny: dict, vocab_size: int, dropout: float) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def keep_layers(cls, model: nn.Module, n: int) -> nn.Module:
        """``model`` cut to its first ``n`` transformer layers, their pretrained weights
        kept (``model.num_layers``: a smaller student for ``ecomtl distill``)."""
        raise ValueError(f"model.num_layers: {cls.__name__} backbones cannot drop layers")

    def set_attention(self, kernel: str) -> None:
        """Switch the Hugging Face model's attention kernel in place (``sdpa``, ``eager``);
        weights and outputs are unchanged, only speed differs. The choice is not saved
        with the model: ``from_pretrained`` picks its own default again."""
        for module in self.model.modules():  # the PreTrainedModel, under any adapter wrapper
            if hasattr(module, "set_attn_implementation"):
                module.set_attn_implementation(kernel)
                return
        raise TypeError(f"{type(self.model).__name__} has no set_attn_implementation")

    # -- forward -------------------------------------------------------------------------
    def token_states(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        raise NotImplementedError

    def lm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Token states → vocabulary logits (backbones with ``has_lm_head``)."""
        raise NotImplementedError

    # -- saving --------------------------------------------------------------------------
    def save_base(self, out: Path, tokenizer) -> set[str]:
        """Write the base model (adapters stripped) so ``from_pretrained`` opens it;
        returns the state-dict keys (relative to this module) it holds."""
        from ecomtl.adapters.base import base_state_dict

        base, keys = base_state_dict(self.model)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, state_dict=base, safe_serialization=True)
        tokenizer.save_pretrained(out)
        return {f"model.{k}" for k in keys}


def backbone_dropouts(model: nn.Module) -> list[tuple[nn.Module, str, float]]:
    """(module, attribute, rate) of every dropout of a Hugging Face model: its
    ``nn.Dropout`` modules, and the float rates that attention kernels read themselves
    (``attention_dropout`` in Llama-style attention)."""
    out = []
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            out.append((module, "p", module.p))
        elif isinstance(getattr(module, "attention_dropout", None), float):
            out.append((module, "attention_dropout", module.attention_dropout))
    return out


def set_dropout(model: nn.Module, p: float) -> None:
    """Every dropout of a Hugging Face model at ``p`` (``model.backbone_dropout``).
    Applied before adapters are injected, so LoRA's own dropout keeps its setting. The
    saved config is not changed: dropout only acts in training, so a bundle's outputs are
    the same either way."""
    for module, attr, _ in backbone_dropouts(model):
        setattr(module, attr, p)


class SourceDropout:
    """``sources.<s>.backbone_dropout``: the backbone's dropouts at a source's own rate
    while the loop trains on that source's batches, and back to the model's rate for the
    others. Only the rates captured at build time (before adapters) move; setting them is
    a loop over the backbone's dropouts (19 in MiniLM-L6), done only when the rate changes."""

    def __init__(self, dropouts: list[tuple[nn.Module, str, float]], by_source: dict[str, Optional[float]]):
        self.dropouts, self.by_source = dropouts, by_source
        self.current: Optional[float] = None  # None: the rates as built

    def before(self, source: str) -> None:
        p = self.by_source.get(source)
        if p == self.current:
            return
        for module, attr, built in self.dropouts:
            setattr(module, attr, built if p is None else p)
        self.current = p


def training_attention(choice: str, on_gpu: bool) -> str:
    """``model.attention``: ``auto`` is eager on CPU. Without dropout PyTorch's fused CPU
    attention makes a MiniLM step 1.7-2.2x slower than eager; with dropout (a usual
    training step) they are within 10% (benchmarks/attention_kernels.py)."""
    if choice != "auto":
        return choice
    return "sdpa" if on_gpu else "eager"


def check_complete(location: str | Path, info: Optional[dict]) -> None:
    """``from_pretrained`` only logs weights it could not find; a backbone that silently
    starts from random weights is an error here."""
    missing = (info or {}).get("missing_keys") or []
    if missing:
        raise ValueError(f"{location}: the checkpoint lacks {len(missing)} weight(s), e.g. {sorted(missing)[:3]}")
