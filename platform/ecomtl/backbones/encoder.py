"""BERT-style encoders (``AutoModel``): MiniLM, BERT, RoBERTa, DeBERTa, ... Mean or CLS
pooling; a tiny random BERT for tests."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ecomtl.backbones.base import BACKBONES, Backbone, check_complete


class TinyEncoder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hidden_size: int = Field(32, ge=8)
    num_hidden_layers: int = Field(2, ge=1)
    num_attention_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(64, ge=8)

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        return self


@BACKBONES.register("encoder")
class EncoderBackbone(Backbone):
    """A Hugging Face encoder (AutoModel), mean or CLS pooling."""

    Tiny = TinyEncoder
    poolings = ("mean", "cls")
    uses_token_types = True

    @classmethod
    def load_tokenizer(cls, location):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(location)

    @classmethod
    def pretrained(cls, location):
        from transformers import AutoModel

        model, info = AutoModel.from_pretrained(location, use_safetensors=True, output_loading_info=True)
        check_complete(location, {"missing_keys": [k for k in info["missing_keys"] if not k.startswith("pooler.")]})
        return model

    @classmethod
    def random(cls, tiny, vocab_size, dropout):
        from transformers import BertConfig, BertModel

        config = BertConfig(vocab_size=vocab_size, max_position_embeddings=512, hidden_dropout_prob=dropout,
                            attention_probs_dropout_prob=dropout, **tiny)
        return BertModel(config)  # with a pooler, like the pretrained checkpoints it stands in for

    @classmethod
    def keep_layers(cls, model, n):
        """The first ``n`` layers of the encoder stack: embeddings and those layers keep
        their pretrained weights (the layers above are dropped, not re-initialised). The
        config says ``num_hidden_layers: n``, so the saved backbone reloads as it is."""
        layers = model.encoder.layer
        if n > len(layers):
            raise ValueError(f"model.num_layers: {n}, but the backbone has only {len(layers)} layers")
        model.encoder.layer = layers[:n]
        model.config.num_hidden_layers = n
        return model

    def token_states(self, input_ids, attention_mask, token_type_ids=None):
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return self.model(**kwargs).last_hidden_state
