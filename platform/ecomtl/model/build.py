"""Building a ``MultiTaskModel`` from the config: the one place that turns
``model.backbone``/``adapter``/``sharing`` and ``tasks.<t>.head`` names into modules."""

from __future__ import annotations

from typing import Optional

from ecomtl.adapters import ADAPTERS
from ecomtl.backbones import BACKBONES
from ecomtl.backbones.base import backbone_dropouts, set_dropout
from ecomtl.backbones.packaged import resolve
from ecomtl.config.schema import ExperimentConfig, ModelConfig
from ecomtl.model.multitask import MultiTaskModel
from ecomtl.sharing import SHARING
from ecomtl.tasks import TASK_HEADS


def load_tokenizer(cfg: ModelConfig, location: Optional[str] = None):
    """The backbone kind's tokenizer policy (pad token, padding side) over the
    pretrained location (or ``location``, e.g. a bundle's backbone folder)."""
    tok = BACKBONES.get(cfg.backbone).load_tokenizer(location or resolve(cfg.pretrained))
    if not tok.is_fast:
        raise ValueError(f"model.pretrained {cfg.pretrained!r}: a fast tokenizer is required (word ids for tagging)")
    return tok


def build_model(cfg: ExperimentConfig, label_infos: dict, tokenizer, location: Optional[str] = None) -> MultiTaskModel:
    """Pretrained weights (or ``model.tiny`` random ones, or those saved at ``location``),
    adapters injected, sharing layer and heads freshly initialised."""
    m = cfg.model
    kind = BACKBONES.get(m.backbone)
    if location is not None:
        hf = kind.pretrained(location)
    elif m.tiny is not None:
        hf = kind.random(m.tiny, len(tokenizer), m.dropout)
    else:
        hf = kind.pretrained(resolve(m.pretrained))
    if m.num_layers is not None:  # a smaller student: the first N pretrained layers
        hf = kind.keep_layers(hf, m.num_layers)
    if m.backbone_dropout is not None:
        set_dropout(hf, m.backbone_dropout)
    dropouts = backbone_dropouts(hf)  # the backbone's own, before an adapter adds its
    tasks = list(cfg.tasks)
    adapter = ADAPTERS.get(m.adapter.kind)(m.adapter.options)
    adapter.attach(hf, tasks)
    backbone = kind(hf, m.pooling)
    routes = adapter.routes(tasks)
    heads, sharing = _heads_and_sharing(cfg, label_infos, backbone.hidden_size)
    for t, head in heads.items():
        head.attach(backbone, tokenizer, routes[t])
    return MultiTaskModel(backbone, heads, sharing, routes, dropouts)


def build_heads(cfg: ExperimentConfig, label_infos: dict, hidden_size: int, routes: dict) -> MultiTaskModel:
    """Sharing layer and heads without a backbone: ``apply`` on encodings made elsewhere."""
    return MultiTaskModel(None, *_heads_and_sharing(cfg, label_infos, hidden_size), routes)


def _heads_and_sharing(cfg: ExperimentConfig, label_infos: dict, hidden: int):
    m = cfg.model
    heads = {t: TASK_HEADS.get(tc.head)(hidden, label_infos[t], m.dropout if tc.dropout is None else tc.dropout,
                                         tc.options)
             for t, tc in cfg.tasks.items()}
    for t, head in heads.items():
        head.task_name = t
    token_tasks = [t for t, h in heads.items() if h.level == "token"]  # soft sharing mixes only their tokens
    return heads, SHARING.get(m.sharing.kind)(hidden, list(cfg.tasks), m.sharing.options, token_tasks)
